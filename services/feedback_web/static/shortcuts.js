// Keyboard shortcuts: a key listed in a submit button's data-keys submits the form with that button.
// Ignored while typing in a field or with a modifier held; one submission per page.
(function () {
  "use strict";
  var sent = false;
  document.addEventListener("keydown", function (event) {
    if (sent || event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    var target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.isContentEditable)) return;
    var key = event.key.toLowerCase();
    var buttons = document.querySelectorAll("button[data-keys]");
    for (var i = 0; i < buttons.length; i++) {
      if (buttons[i].getAttribute("data-keys").split(" ").indexOf(key) >= 0) {
        event.preventDefault();
        sent = true;
        buttons[i].classList.add("pressed");
        buttons[i].form.requestSubmit(buttons[i]);
        return;
      }
    }
  });
  document.addEventListener("submit", function () { sent = true; });
})();
