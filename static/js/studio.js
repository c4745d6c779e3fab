// Character counters for the prompt fields: the limit follows the chosen model.
(function () {
  function limitFor(field) {
    if (field.name === "prompt") {
      var sizeField = document.getElementById("size-field");
      if (sizeField && sizeField.dataset.promptLimit) return Number(sizeField.dataset.promptLimit);
    }
    return Number(field.dataset.limit || 0);
  }
  function update() {
    document.querySelectorAll("[data-counter-for]").forEach(function (counter) {
      var field = document.getElementById(counter.dataset.counterFor);
      if (!field) return;
      var limit = limitFor(field);
      var length = Array.from(field.value).length;
      counter.textContent = limit ? length + " / " + limit : String(length);
      counter.classList.toggle("over", limit > 0 && length > limit);
    });
  }
  document.addEventListener("input", update);
  document.addEventListener("DOMContentLoaded", update);
  document.addEventListener("htmx:afterSettle", update);
})();

// Copy a prompt to the clipboard from any [data-copy] button.
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-copy]");
  if (!button) return;
  var done = function () {
    var label = button.textContent;
    button.textContent = button.dataset.copied || "✓";
    setTimeout(function () { button.textContent = label; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(button.dataset.copy).then(done);
  } else {
    var area = document.createElement("textarea");
    area.value = button.dataset.copy;
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
    done();
  }
});

// The theme switch repaints at once; htmx saves the choice in the cookie the server reads for the next page.
document.addEventListener("change", function (event) {
  if (!event.target.matches("[data-theme-switch]")) return;
  var theme = event.target.value;
  var root = document.documentElement;
  if (theme === "light" || theme === "dark") root.dataset.theme = theme;
  else delete root.dataset.theme;
  var scheme = document.querySelector('meta[name="color-scheme"]');
  if (scheme) scheme.content = root.dataset.theme || "light dark";
});

// Fields in a [data-autosubmit] element (the language menu, the gallery filters) submit their form on change.
document.addEventListener("change", function (event) {
  if (event.target.form && event.target.closest("[data-autosubmit]")) event.target.form.requestSubmit();
});

// A form with data-confirm asks first; captured so that no other submit handler runs when the answer is no.
document.addEventListener("submit", function (event) {
  var form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    event.stopImmediatePropagation();
  }
}, true);

// Each page of the gallery arrives as a block of rows of its own, so that only the new block is laid out. A
// block's last row stands at its natural height until the next page comes; then it moves into the new block,
// and the rows run on as if the gallery were one.
document.addEventListener("htmx:load", function (event) {
  var block = event.detail.elt;
  var before = block.matches("[data-grid-page]") && block.previousElementSibling;
  if (!before || !before.matches("[data-grid-page]")) return;
  var tiles = Array.from(before.children);
  var top = tiles[tiles.length - 1].getBoundingClientRect().top;
  var lastRow = [];
  for (var i = tiles.length - 1; i >= 0 && Math.abs(tiles[i].getBoundingClientRect().top - top) < 2; i--) {
    lastRow.unshift(tiles[i]);
  }
  var focused = document.activeElement;
  block.prepend.apply(block, lastRow);
  if (!before.children.length) before.remove();
  if (focused && block.contains(focused)) focused.focus({ preventScroll: true });
});
