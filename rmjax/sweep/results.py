"""Where every point of a sweep stands, and one table of their results (`rmjax sweep --collect`).

A sweep directory W holds

  sweep.json        the grid: each point's name, overrides and workdir, the launcher, job ids
  <point>/          each point's `rmjax train` workdir (config.json, checkpoints/, metrics.jsonl)
  logs/<point>.exit the point's exit code (and its one-line error), written when its train ends
  logs/<point>.out, .err   a SLURM task's output
  results.md, results.json, results.png   what `collect` writes

A point's status is read from these files alone (nothing is asked of a scheduler except, for a
SLURM sweep, which array tasks `squeue` still lists): `running` while a live train holds the
workdir's lock (`.rmjax.lock`; a holder on another host counts as live unless the scheduler no
longer lists the task), `done` when its checkpoints reached `train.steps` (or it exited 0),
`failed` when it exited non-zero or stopped without an exit record (killed, timed out),
`queued` while the scheduler lists it but it has not started, else `not started`.
"""

from __future__ import annotations

import json
import math
import os
import socket
from typing import Optional

from rmjax.train.lock import LOCK_NAME

SWEEP_FILE = "sweep.json"
MIN_WORDS = ("loss", "ece", "error", "nll", "kl", "perplexity")


def exit_path(sweep_dir: str, name: str) -> str:
  return os.path.join(sweep_dir, "logs", f"{name}.exit")


def write_exit(sweep_dir: str, name: str, code: int, message: str = "") -> None:
  os.makedirs(os.path.join(sweep_dir, "logs"), exist_ok=True)
  with open(exit_path(sweep_dir, name), "w") as f:
    f.write(f"{code}\n{message}\n")


def clear_exit(sweep_dir: str, name: str) -> None:
  try:
    os.remove(exit_path(sweep_dir, name))
  except FileNotFoundError:
    pass


def _read_exit(sweep_dir: str, name: str) -> tuple[Optional[int], str]:
  try:
    with open(exit_path(sweep_dir, name)) as f:
      lines = f.read().splitlines()
    code = int(lines[0])
  except (OSError, ValueError, IndexError):
    return None, ""
  message = lines[1].strip() if len(lines) > 1 else ""
  if code and not message:  # a SLURM task: its one-line error is in its .err log
    try:
      with open(os.path.join(sweep_dir, "logs", f"{name}.err"), errors="replace") as f:
        errors = [l.strip() for l in f if l.startswith("rmjax: error:")]
      message = errors[-1][len("rmjax: error:"):].strip() if errors else ""
    except OSError:
      pass
  return code, message


def _lock_holder(workdir: str) -> Optional[tuple[str, str]]:
  """(pid, host) of the train holding `workdir`, or None. The lock file is removed when a run
  ends; one left behind by a killed run names a dead pid (checked on this host only)."""
  try:
    with open(os.path.join(workdir, LOCK_NAME)) as f:
      pid, host = (f.read().split() + ["?", "?"])[:2]
  except OSError:
    return None
  if host == socket.gethostname():
    try:
      os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
      return None
    except PermissionError:
      pass  # alive, another user's
  return pid, host


def checkpoint_step(workdir: str) -> Optional[int]:
  """The newest `checkpoints/<step>` under `workdir` (nested runs included)."""
  steps = [int(d) for root, dirs, _ in os.walk(workdir) if os.path.basename(root) == "checkpoints"
           for d in dirs if d.isdigit()]
  return max(steps) if steps else None


def read_metrics(workdir: str) -> list[dict]:
  rows = []
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except ValueError:
          pass  # a line being written as we read
  except OSError:
    pass
  return rows


def _total_steps(workdir: str) -> Optional[int]:
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      return int(json.load(f)["train"]["steps"])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def point_status(sweep_dir: str, point: dict, active: Optional[dict] = None) -> dict:
  """{status, reason, step, steps} of one point; `active` maps point names to the state the
  scheduler lists them in (None: no scheduler asked)."""
  wd = point["workdir"]
  code, message = _read_exit(sweep_dir, point["name"])
  ckpt, steps = checkpoint_step(wd), _total_steps(wd)
  rows = read_metrics(wd)
  step = max([r.get("step", 0) for r in rows] + [ckpt or 0]) if (rows or ckpt) else 0
  out = {"step": step, "steps": steps, "reason": ""}
  holder = _lock_holder(wd)
  scheduled = None if active is None else active.get(point["name"])
  if holder and (active is None or scheduled or holder[1] == socket.gethostname()):
    out.update(status="running", reason=f"pid {holder[0]} on {holder[1]}")
  elif scheduled and scheduled.upper() in ("RUNNING", "COMPLETING", "CONFIGURING"):
    out.update(status="running", reason=f"scheduler: {scheduled.lower()}")
  elif code == 0 or (ckpt is not None and steps is not None and ckpt >= steps):
    out.update(status="done")
  elif scheduled:
    out.update(status="queued", reason=f"scheduler: {scheduled.lower()}")
  elif code is not None:
    out.update(status="failed", reason=f"exit code {code}" + (f": {message}" if message else ""))
  elif os.path.exists(os.path.join(wd, "config.json")) or rows or ckpt is not None:
    out.update(status="failed", reason=f"stopped at step {step} with no exit record "
               "(killed or timed out); a resubmitted sweep resumes it")
  else:
    out.update(status="not started")
  return out


def metric_and_mode(spec: str, rows_by_point: list[list[dict]], workdirs: list[str]) -> tuple[str, str]:
  """The metric to rank by and 'max' / 'min': `--metric NAME[:max|:min]`, else the runs'
  `train.best_metric`, else eval_accuracy, eval_loss or loss (the first the runs logged)."""
  name, _, mode = (spec or "").partition(":")
  if not name:
    for wd in workdirs:
      try:
        with open(os.path.join(wd, "config.json")) as f:
          tc = json.load(f)["train"]
      except (OSError, ValueError, KeyError):
        continue
      if tc.get("best_metric"):
        name, mode = tc["best_metric"], mode or tc.get("best_mode", "max")
        break
  if not name:
    logged = {k for rows in rows_by_point for r in rows for k in r}
    name = next((k for k in ("eval_accuracy", "eval_loss", "loss") if k in logged), "eval_accuracy")
  if mode not in ("max", "min"):
    mode = "min" if any(w in name.lower() for w in MIN_WORDS) else "max"
  return name, mode


def _finite(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def collect(sweep_dir: str, points: list[dict], metric: str = "",
            active: Optional[dict] = None) -> dict:
  """The table of every point (as written to results.json)."""
  rows_by_point = [read_metrics(p["workdir"]) for p in points]
  name, mode = metric_and_mode(metric, rows_by_point, [p["workdir"] for p in points])
  better = max if mode == "max" else min
  table = []
  for p, rows in zip(points, rows_by_point):
    final: dict = {}
    for r in rows:
      final.update({k: v for k, v in r.items() if k != "step" and (_finite(v) or v is None
                                                                   or isinstance(v, str))})
    scored = [(r[name], r["step"]) for r in rows if _finite(r.get(name))]
    best = better(scored, key=lambda t: t[0]) if scored else None
    table.append({"name": p["name"], "overrides": p["overrides"], "workdir": p["workdir"],
                  **point_status(sweep_dir, p, active), "value": final.get(name),
                  "best_value": best[0] if best else None, "best_step": best[1] if best else None,
                  "final": final})
  done = [t for t in table if t["status"] == "done" and _finite(t["value"])]
  pool = done or [t for t in table if _finite(t["value"])]
  best = better(pool, key=lambda t: t["value"]) if pool else None
  counts: dict = {}
  for t in table:
    counts[t["status"]] = counts.get(t["status"], 0) + 1
  return {"sweep": os.path.abspath(sweep_dir), "metric": name, "mode": mode,
          "best": best["name"] if best else None, "best_finished": bool(done), "counts": counts,
          "swept": list(dict.fromkeys(k for p in points for k in p["overrides"])), "points": table}


def _fmt(v) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def best_line(result: dict) -> str:
  if result["best"] is None:
    return f"best: none yet (no point logged {result['metric']})"
  t = next(t for t in result["points"] if t["name"] == result["best"])
  note = "" if result["best_finished"] else " (no point has finished: best so far)"
  over = ", ".join(f"{k}={_fmt(v)}" for k, v in t["overrides"].items())
  return (f"best: {t['name']} ({over}): {result['metric']} = {_fmt(t['value'])} "
          f"({result['mode']}), best step {t['best_step']}{note}")


def markdown(result: dict) -> str:
  metric, swept = result["metric"], result["swept"]
  head = ["point", *swept, "status", "steps", "loss", metric, "best step", f"best {metric}"]
  lines = [f"# sweep {result['sweep']}", "",
           "status: " + ", ".join(f"{n} {s}" for s, n in result["counts"].items()), "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for t in result["points"]:
    steps = f"{t['step']}/{t['steps']}" if t["steps"] else str(t["step"])
    status = t["status"] + (f" ({t['reason']})" if t["status"] == "failed" else "")
    name = f"**{t['name']}**" if t["name"] == result["best"] else t["name"]
    cells = [name, *(_fmt(t["overrides"].get(k)) for k in swept), status.replace("|", "/"), steps,
             _fmt(t["final"].get("loss")), _fmt(t["value"]), _fmt(t["best_step"]),
             _fmt(t["best_value"])]
    lines.append("| " + " | ".join(cells) + " |")
  failed = [f"{t['name']} ({t['reason']})" for t in result["points"] if t["status"] == "failed"]
  return "\n".join(lines + ["", best_line(result)] + (["failed: " + "; ".join(failed)] if failed
                                                      else []) + [""])


def _strict(v):
  if isinstance(v, float) and not math.isfinite(v):
    return None
  if isinstance(v, dict):
    return {k: _strict(x) for k, x in v.items()}
  if isinstance(v, list):
    return [_strict(x) for x in v]
  return v


def plot(result: dict, path: str) -> bool:
  """The swept keys (one panel each) against the metric's final value; False if nothing to plot."""
  shown = [t for t in result["points"] if _finite(t["value"])]
  if not shown or not result["swept"]:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top  (slow import, only when plotting)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  keys = result["swept"]
  fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
  colors = {"done": "tab:blue", "running": "tab:orange", "failed": "tab:red"}
  for ax, key in zip(axes[0], keys):
    xs = [t["overrides"].get(key) for t in shown]
    numeric = all(_finite(x) for x in xs)
    labels = sorted({str(x) for x in xs})
    pos = xs if numeric else [labels.index(str(x)) for x in xs]
    for t, x in zip(shown, pos):
      ax.scatter(x, t["value"], color=colors.get(t["status"], "tab:gray"), zorder=3,
                 marker="*" if t["name"] == result["best"] else "o",
                 s=140 if t["name"] == result["best"] else 40)
      ax.annotate(t["name"], (x, t["value"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 10:
      ax.set_xscale("log")
    if not numeric:
      ax.set_xticks(range(len(labels)), labels, rotation=20)
    ax.set_xlabel(key)
    ax.set_ylabel(f"{result['metric']} (final)")
    ax.grid(alpha=0.3)
  fig.suptitle(f"{os.path.basename(result['sweep'])}: {result['metric']} ({result['mode']}; "
               "blue done, orange running, red failed, * best)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def write_results(sweep_dir: str, result: dict) -> dict:
  """results.md, results.json and results.png under `sweep_dir`; returns {kind: path}."""
  os.makedirs(sweep_dir, exist_ok=True)
  paths = {k: os.path.join(sweep_dir, f"results.{k}") for k in ("md", "json", "png")}
  for kind, text in (("md", markdown(result)),
                     ("json", json.dumps(_strict(result), indent=1, allow_nan=False) + "\n")):
    tmp = paths[kind] + ".tmp"
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, paths[kind])
  if not plot(result, paths["png"]):
    paths.pop("png")
  return paths

