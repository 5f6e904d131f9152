// Render the math that pymdownx.arithmatex (generic mode) leaves in the page as \( \) and \[ \],
// with the KaTeX copy shipped in docs/assets/katex (no network needed). `document$` is
// Material's page observable: it also fires after instant navigation.
function renderMath(root) {
  root.querySelectorAll(".arithmatex").forEach(function (el) {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  });
}

if (typeof document$ !== "undefined") {
  document$.subscribe(function () {
    renderMath(document);
  });
} else {
  document.addEventListener("DOMContentLoaded", function () {
    renderMath(document);
  });
}
