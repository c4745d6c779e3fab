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

// ← and → step between gallery items on a detail page.
document.addEventListener("keydown", function (event) {
  if (event.altKey || event.ctrlKey || event.metaKey || event.target.closest("input, textarea, select")) return;
  var link = event.key === "ArrowLeft" ? document.getElementById("newer")
           : event.key === "ArrowRight" ? document.getElementById("older") : null;
  if (link) window.location.href = link.href;
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
