// Typeset every formula of the page with the bundled KaTeX (no network).
// Sphinx writes inline math as <span class="math">TeX</span> and display math as
// <div class="math"><span class="math-tex">TeX</span></div> (see docs/_ext/dgmlab_sphinx.py).
// A formula KaTeX cannot parse is shown in red with the error as its tooltip (class katex-error);
// the browser test fails on any such element.
(function () {
  "use strict";
  function typeset() {
    if (typeof katex === "undefined") {
      document.documentElement.setAttribute("data-math", "katex-missing");
      return;
    }
    var options = { throwOnError: false, strict: "ignore", trust: false };
    document.querySelectorAll("span.math").forEach(function (el) {
      katex.render(el.textContent, el, Object.assign({ displayMode: false }, options));
    });
    document.querySelectorAll("div.math").forEach(function (el) {
      var tex = el.querySelector("span.math-tex");
      if (tex === null) {
        return;
      }
      var target = document.createElement("span");
      target.className = "math-display";
      katex.render(tex.textContent, target, Object.assign({ displayMode: true }, options));
      tex.replaceWith(target);
    });
    document.documentElement.setAttribute("data-math", "rendered");
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", typeset);
  } else {
    typeset();
  }
})();
