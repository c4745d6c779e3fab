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
