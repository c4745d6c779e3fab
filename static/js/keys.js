// Keyboard shortcuts. Each one stands for a control that is already on the page, so nothing here is needed
// to reach anything: Ctrl/⌘+Enter presses Generate, ← → follow an image's Previous and Next links, the arrow
// keys move between gallery tiles, and Escape closes an open Rename.
(function () {
  "use strict";

  function typing(target) {
    return target.closest("input, textarea, select, [contenteditable]");
  }

  // Ctrl+Enter (⌘+Enter on a Mac) in a form that offers it submits it, through htmx if the form uses it.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey) || event.altKey || event.shiftKey) return;
    var form = event.target.closest && event.target.closest("form[data-submit-shortcut]");
    if (!form) return;
    event.preventDefault();
    var button = form.querySelector("button[type=submit]:not([disabled])");
    if (button) form.requestSubmit(button);
  });

  // ← and → on an image's page follow its rel="prev" and rel="next" links, in the gallery's order.
  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
    if (typing(event.target) || document.querySelector("dialog[open]")) return;
    var rel = event.key === "ArrowLeft" ? "prev" : event.key === "ArrowRight" ? "next" : null;
    var link = rel && document.querySelector("[data-arrow-keys] a[rel=" + rel + "]");
    if (!link) return;
    event.preventDefault();
    link.click();
  });

  // In a grid of tiles, the arrow keys move focus to the neighbouring tile: ← → in reading order, ↑ ↓ to the
  // nearest tile of the row above or below. Only the rows passed are measured, never the whole grid.
  function centre(box) {
    return box.left + box.width / 2;
  }

  function vertical(tiles, at, down) {
    var step = down ? 1 : -1;
    var top = tiles[at].getBoundingClientRect().top;
    var x = centre(tiles[at].getBoundingClientRect());
    var best = null, bestDistance = Infinity, rowTop = null;
    for (var i = at + step; i >= 0 && i < tiles.length; i += step) {
      var box = tiles[i].getBoundingClientRect();
      if (Math.abs(box.top - top) < 2) continue;
      if (rowTop === null) rowTop = box.top;
      else if (Math.abs(box.top - rowTop) >= 2) break;
      var distance = Math.abs(centre(box) - x);
      if (distance < bestDistance) { best = tiles[i]; bestDistance = distance; }
    }
    return best;
  }

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
    if (!/^Arrow(Left|Right|Up|Down)$/.test(event.key)) return;
    var from = event.target.closest && event.target.closest(".grid .tile-link, .grid .tile-select");
    if (!from) return;
    // The gallery's pages are blocks of their own; a collection is one grid.
    var grid = from.closest(".gallery-grid") || from.closest(".grid");
    var tiles = Array.from(grid.querySelectorAll(".tile"));
    var at = tiles.indexOf(from.closest(".tile"));
    var forward = event.key === "ArrowRight" || event.key === "ArrowDown";
    var to = event.key === "ArrowLeft" || event.key === "ArrowRight" ? tiles[at + (forward ? 1 : -1)]
      : vertical(tiles, at, forward);
    var target = to ? to.querySelector(".tile-link") : forward && grid.querySelector(":scope > .more");
    if (!target) return;
    event.preventDefault();
    target.focus();
  });

  // Escape closes an open Rename (a <details>) and gives focus back to its button; dialogs close by themselves.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    var open = event.target.closest && event.target.closest("details.rename[open]");
    if (!open) return;
    open.open = false;
    open.querySelector("summary").focus();
  });
})();
