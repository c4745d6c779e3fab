// Share links: the Share dialog and Copy link in the studio, and the lightbox on public pages.
(function () {
  // Share opens its dialog at once; htmx loads the form into it meanwhile.
  document.addEventListener("submit", function (event) {
    var opener = event.target.closest("form[data-share-dialog]");
    if (!opener || !window.htmx) return;
    var dialog = document.getElementById(opener.dataset.shareDialog);
    if (dialog && !dialog.open) dialog.showModal();
  });

  document.addEventListener("click", function (event) {
    var closer = event.target.closest("[data-close-dialog]");
    if (closer && closer.closest("dialog")) closer.closest("dialog").close();
    // A click on the backdrop lands on the dialog itself.
    if (event.target.matches && event.target.matches("dialog.share-dialog")) event.target.close();
  });

  // A closed dialog forgets its form, so that the next Share starts afresh and no two forms share ids.
  document.addEventListener("close", function (event) {
    var body = event.target.matches("dialog.share-dialog") && event.target.querySelector(".share-body");
    if (!body) return;
    var loading = document.createElement("p");
    loading.className = "muted share-loading";
    loading.textContent = body.dataset.loading || "";
    body.replaceChildren(loading);
  }, true);

  // Focus follows what arrived: the first field of the form, then the new link, selected for copying.
  document.addEventListener("htmx:afterSwap", function () {
    var dialog = document.querySelector("dialog.share-dialog[open]");
    if (!dialog) return;
    var field = dialog.querySelector(".share-created .share-url") || dialog.querySelector(".share-form select");
    if (field) field.focus();
  });

  // htmx swaps nothing on an error answer, so the dialog says what happened instead of loading forever.
  document.addEventListener("htmx:responseError", function (event) {
    var body = event.detail.elt.closest(".share-dialog .share-body") ||
      document.querySelector("dialog.share-dialog[open] .share-body");
    if (!body) return;
    var failed = document.createElement("p");
    failed.className = "form-error";
    failed.setAttribute("role", "alert");
    failed.textContent = body.dataset.failed || "";
    body.replaceChildren(failed);
  });

  document.addEventListener("focusin", function (event) {
    if (event.target.matches("[data-select-on-focus]")) event.target.select();
  });

  // Copy link: the clipboard where the browser allows it, else the text is left selected to copy by hand.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-link]");
    if (!button) return;
    var input = document.getElementById(button.dataset.copyLink);
    if (!input) return;
    var label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    var copied = function () {
      button.textContent = button.dataset.copied || label;
      setTimeout(function () { button.textContent = label; }, 1600);
    };
    var byHand = function () {
      input.focus();
      input.select();
      try { if (document.execCommand("copy")) copied(); } catch (error) { /* selected: the designer copies it */ }
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(copied, byHand);
    } else {
      byHand();
    }
  });

  // Public pages: images open full size over the page; ← → step, Esc closes. Without JavaScript the link opens the file.
  var lightbox = null;
  var current = 0;

  function pictures() {
    return Array.prototype.slice.call(document.querySelectorAll("a[data-lightbox]"));
  }

  function show(index) {
    var all = pictures();
    if (!all.length) return;
    current = (index + all.length) % all.length;
    var anchor = all[current];
    var image = lightbox.querySelector(".lightbox-image");
    var source = anchor.querySelector("img");
    image.src = anchor.href;
    image.alt = source ? source.alt : "";
    lightbox.querySelector(".lightbox-count").textContent = all.length > 1 ? (current + 1) + " / " + all.length : "";
    var download = lightbox.querySelector(".lightbox-download");
    if (download) {
      download.hidden = !anchor.dataset.download;
      download.href = anchor.dataset.download || "";
    }
    lightbox.querySelectorAll("[data-lightbox-step]").forEach(function (button) { button.hidden = all.length < 2; });
  }

  function open(index) {
    if (!lightbox) {
      var template = document.getElementById("lightbox-template");
      if (!template) return false;
      lightbox = template.content.firstElementChild.cloneNode(true);
      document.body.appendChild(lightbox);
      lightbox.addEventListener("click", function (event) {
        var step = event.target.closest("[data-lightbox-step]");
        if (step) show(current + Number(step.dataset.lightboxStep));
        else if (event.target.closest("[data-lightbox-close]") || event.target === lightbox) lightbox.close();
      });
      lightbox.addEventListener("close", function () { lightbox.querySelector(".lightbox-image").removeAttribute("src"); });
    }
    show(index);
    lightbox.showModal();
    return true;
  }

  document.addEventListener("click", function (event) {
    var anchor = event.target.closest("a[data-lightbox]");
    if (!anchor || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    if (open(pictures().indexOf(anchor))) event.preventDefault();
  });

  document.addEventListener("keydown", function (event) {
    if (!lightbox || !lightbox.open) return;
    if (event.key === "ArrowLeft") show(current - 1);
    if (event.key === "ArrowRight") show(current + 1);
  });
})();
