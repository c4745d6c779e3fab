// Collections: selecting gallery tiles, the Add to collection dialog, and reordering a collection by drag.
// Every control here is also a plain form or link; this file only makes them quicker.
(function () {
  "use strict";

  // Selection: a checkbox per tile; click toggles, shift-click sets a range, Escape clears.
  var anchor = null;

  function boxes() { return Array.from(document.querySelectorAll(".tile-select")); }
  function selected() { return boxes().filter(function (box) { return box.checked; }); }

  function showCount() {
    var label = document.querySelector("[data-selection-count]");
    var count = selected().length;
    document.body.classList.toggle("is-selecting", count > 0);
    if (label) label.textContent = label.dataset.template.replace("{count}", count);
  }

  function setRange(from, to, state) {
    var all = boxes();
    var start = all.indexOf(from), end = all.indexOf(to);
    if (start < 0 || end < 0) return;
    all.slice(Math.min(start, end), Math.max(start, end) + 1).forEach(function (box) { box.checked = state; });
  }

  function toggled(box, shift) {
    if (shift && anchor && anchor !== box && document.contains(anchor)) setRange(anchor, box, box.checked);
    anchor = box;
    showCount();
  }

  function clearSelection() {
    selected().forEach(function (box) { box.checked = false; });
    anchor = null;
    showCount();
  }

  document.addEventListener("click", function (event) {
    var box = event.target.closest(".tile-select");
    if (box) { toggled(box, event.shiftKey); return; }
    // While something is selected, a click on a tile selects it too, as in a photo library.
    var link = event.target.closest(".tile-link");
    if (!link || !document.body.classList.contains("is-selecting") || event.ctrlKey || event.metaKey) return;
    var tileBox = link.closest(".tile").querySelector(".tile-select");
    if (!tileBox) return;
    event.preventDefault();
    tileBox.checked = !tileBox.checked;
    toggled(tileBox, event.shiftKey);
  });

  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape" || document.querySelector("dialog[open]") || !selected().length) return;
    if (event.target.closest("input:not(.tile-select), textarea, select")) return;
    clearSelection();
  });

  // The bar's Clear is a reset button, so it works without this file; the count follows it here.
  document.addEventListener("reset", function (event) {
    if (event.target.id === "selection") setTimeout(clearSelection);
  });
  document.addEventListener("DOMContentLoaded", showCount);
  document.addEventListener("htmx:afterSettle", showCount);
  // The browser may restore ticks after Back; the bar must agree with them.
  window.addEventListener("pageshow", showCount);
  document.addEventListener("collectionAdded", clearSelection);

  // The picker: the same page the links and forms open without JavaScript, shown in a <dialog>.
  function openPicker(selector, url) {
    var dialog = document.querySelector(selector);
    if (!dialog || !window.htmx) return false;
    var body = dialog.querySelector("[data-picker-body]");
    var loading = document.createElement("p");
    loading.className = "picker-loading";
    loading.textContent = dialog.dataset.loading;
    body.replaceChildren(loading);
    dialog.showModal();
    window.htmx.ajax("GET", url, { source: body, target: body, swap: "innerHTML" });
    return true;
  }

  document.addEventListener("submit", function (event) {
    var form = event.target.closest("form[data-picker]");
    // The gallery's selection goes with the collection chosen in the dialog (hx-include), not in this URL.
    if (form && openPicker(form.dataset.picker, form.action)) event.preventDefault();
  });

  document.addEventListener("click", function (event) {
    var link = event.target.closest("a[data-picker]");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    if (openPicker(link.dataset.picker, link.href)) event.preventDefault();
  });

  document.addEventListener("click", function (event) {
    var close = event.target.closest(".picker-dialog [data-close-dialog]");
    if (close) close.closest("dialog").close();
    // A click on the backdrop (the dialog itself, outside its panel) closes it.
    if (event.target.matches("dialog.picker-dialog")) event.target.close();
  });

  // Typing in the picker's Find box narrows the list of collections.
  document.addEventListener("input", function (event) {
    if (!event.target.matches("[data-picker-filter]")) return;
    var words = event.target.value.trim().toLowerCase();
    event.target.closest(".picker").querySelectorAll(".picker-list li").forEach(function (item) {
      item.hidden = words !== "" && item.dataset.name.indexOf(words) < 0;
    });
  });

  // Our views answer bad input with 400 or 422 and the form with its message: show it, as without JavaScript.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var status = event.detail.xhr.status;
    if ((status === 400 || status === 422) && event.detail.elt.closest("[data-swap-errors]")) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  // Anything else (a 403, a 500, no network) leaves a sentence where the designer is looking.
  function failed(event) {
    var region = event.detail.elt.closest("[data-collections-failed]");
    if (!region) return;
    var status = region.querySelector("[data-status]");
    if (status) {
      status.textContent = region.dataset.collectionsFailed;
      return;
    }
    var message = document.createElement("p");
    message.className = "form-error picker-failed";
    message.setAttribute("role", "alert");
    message.textContent = region.dataset.collectionsFailed;
    region.querySelector("[data-picker-body]").replaceChildren(message);
  }
  document.addEventListener("htmx:responseError", failed);
  document.addEventListener("htmx:sendError", failed);

  // Drag and drop on a collection's page: the tile moves as it is dragged, and the order is saved on drop.
  var dragged = null;
  var before = "";

  function order(grid) {
    return Array.from(grid.querySelectorAll(".tile[data-image]")).map(function (tile) { return tile.dataset.image; });
  }

  document.addEventListener("dragstart", function (event) {
    var tile = event.target.closest && event.target.closest("[data-order-url] .tile[draggable=true]");
    if (!tile) return;
    dragged = tile;
    before = order(tile.parentElement).join(",");
    event.dataTransfer.effectAllowed = "move";
    event.dataTransfer.setData("text/plain", tile.dataset.image);
    // After the drag image is taken, so the ghost under the pointer stays bright.
    setTimeout(function () { tile.classList.add("is-dragging"); });
  });

  document.addEventListener("dragover", function (event) {
    if (!dragged) return;
    var grid = dragged.parentElement;
    if (!grid.contains(event.target)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "move";
    var tile = event.target.closest(".tile");
    if (!tile || tile === dragged) return;
    var box = tile.getBoundingClientRect();
    var after = event.clientX > box.left + box.width / 2;
    grid.insertBefore(dragged, after ? tile.nextSibling : tile);
  });

  document.addEventListener("drop", function (event) {
    if (dragged) event.preventDefault();
  });

  document.addEventListener("dragend", function () {
    if (!dragged) return;
    var tile = dragged;
    var grid = tile.closest("[data-order-url]");
    dragged = null;
    tile.classList.remove("is-dragging");
    var now = order(tile.parentElement).join(",");
    if (!grid || now === before || !window.htmx) return;
    tile.parentElement.querySelectorAll(".tile-position").forEach(function (label, index) {
      label.textContent = index + 1;
    });
    window.htmx.ajax("POST", grid.dataset.orderUrl,
                     { source: grid, target: grid, swap: "outerHTML", values: { order: now } });
  });
})();
