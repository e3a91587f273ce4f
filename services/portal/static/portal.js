// The live parts, in plain script: a price estimate as a size changes, and a confirmation
// before destructive forms. Pages work without it (the server checks funds again).
document.querySelectorAll("form[data-estimate]").forEach((form) => {
  const size = form.querySelector("select[name=tier]");
  const out = form.querySelector(".estimate");
  if (!size || !out) return;
  let asked = 0;
  const show = async () => {
    const mine = ++asked;
    out.textContent = "Pricing…";
    try {
      const vm = form.dataset.vm ? "&vm=" + encodeURIComponent(form.dataset.vm) : "";
      const r = await fetch("/vms/estimate?tier=" + encodeURIComponent(size.value) + vm,
                            { credentials: "same-origin" });
      const e = await r.json();
      if (mine !== asked) return;
      if (!r.ok) { out.textContent = e.error || "No estimate."; return; }
      out.textContent = `${e.hourly} an hour · ${e.monthly} a month` +
        (e.insufficient ? ` — ${e.message}` : ` (${e.available} available)`);
      out.classList.toggle("short", e.insufficient);
    } catch (_) {
      if (mine === asked) out.textContent = "The estimate is not available right now.";
    }
  };
  size.addEventListener("change", show);
  if (!form.closest("tr")) show();
});
document.querySelectorAll("form[data-confirm]").forEach((form) => {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
});
// A simulation run started from the page: poll its state and output until it ends.
document.querySelectorAll("[data-run]").forEach((box) => {
  const state = box.querySelector("[data-testid=run-state]");
  const output = box.querySelector("[data-testid=run-output]");
  const poll = async () => {
    try {
      const r = await fetch("/simulation/runs/current", { credentials: "same-origin" });
      const run = await r.json();
      output.textContent = run.output || "";
      if (run.running) {
        state.textContent = "Running…";
        setTimeout(poll, 2000);
      } else if (run.exit_code !== null && run.exit_code !== undefined) {
        state.textContent = `Finished (exit code ${run.exit_code}). Reload for its report.`;
        const button = box.querySelector("button");
        if (button) button.disabled = false;
      }
    } catch (_) { setTimeout(poll, 5000); }
  };
  if (state.textContent.startsWith("Running")) poll();
});
