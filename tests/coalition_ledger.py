#!/usr/bin/env python3
"""coalition_ledger.py [--rounds R] LEDGER_JSON COORDINATOR_LOGS SITE=METRICS... [-- SITE:KEY=N ...]

Checks a ledger (the output of `entente ledger --json` of a coordinator's
checkpoint, or of a site's) three ways:

1. against the coordinator's metrics.jsonl, as docs/coalition.md ("The
   ledger") says to recompute it: tokens = the site's site_tokens in the round
   records, accepted = the round records that list it in `sites`,
   rounds_joined = those that list it in `members`, rejected by kind = its
   `rejected` records of that kind, scored and loss_gain = the count and the
   sum of its non-null site_loss_gain entries in the round records that
   merged it, inner_steps and compute_s = the sums of
   its `report` records, first_seen = its first `joined` record, last_seen =
   its last `report` record;
2. against each site's own metrics.jsonl: inner_steps and compute_s = the
   sums over its round records, tokens = the tokens it trained in the rounds
   the coordinator merged it (the difference of its cumulative `tokens`):
   only for a run without cuts, restarts or takeovers (give no SITE=METRICS
   otherwise);
3. against expectations given after `--`: SITE:KEY=N with KEY a top-level
   count or a reason of `rejected` (norm, undecodable, wrong_anchor, stale,
   loss, tokens).

COORDINATOR_LOGS is one coordinator's metrics.jsonl, or the logs of a
coalition's coordinators in order, joined by commas: a primary's, then its
standby's (then, down a chain of standbys, each next one that took over).
The records the ledger sums are recomputed across them as docs/coalition.md
says: a log appended to by a restarted coordinator counts the first life's
records up to the round record that ends its checkpoint (round R - 1, R the
`restart` record's round) and every record of the second life (from
`restart` on); a standby's log continues its streamer's (the primary's, or
in a chain the standby's before it) up to the round record R - 1 (R its
`takeover` record's round) from its `takeover` record on. --rounds R: the
ledger is the one after R rounds merged (a site's checkpoint holds the
ledger sent with the update of round R - 1): the records up to the round
record R - 1.

Prints what it compared; exits 1 naming every mismatch.
"""
import json
import sys


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def cut(seq, rounds, what):
    """The records of seq up to the one that ends the state after `rounds`
    rounds merged: the last round record of round rounds - 1 (the start
    record for 0)."""
    for i in range(len(seq) - 1, -1, -1):
        r = seq[i]
        if (rounds == 0 and r.get("event") == "start") or \
                (rounds > 0 and r.get("event") == "round" and r["round"] == rounds - 1):
            return seq[:i + 1]
    raise SystemExit(f"coalition_ledger.py: {what}: no record ends round {rounds - 1} before it")


def effective(paths):
    """The coordinator records the ledger sums, across restarts and takeovers."""
    seq = []
    for n, path in enumerate(paths):
        recs = records(path)
        if n > 0:  # a standby: from its takeover on
            at = [i for i, r in enumerate(recs) if r.get("event") == "takeover"]
            if not at:
                raise SystemExit(f"coalition_ledger.py: {path} has no takeover record")
            recs = recs[at[0]:]
        for r in recs:
            if r.get("event") in ("restart", "takeover") and (n > 0 or r["event"] == "restart"):
                seq = cut(seq, r["round"], f"{path}: {r['event']} at round {r['round']}")
            seq.append(r)
    return seq


def close(a, b):
    return abs(a - b) <= 1e-4 * max(abs(a), abs(b)) + 1e-6


def main(argv):
    args = argv[1:]
    rounds_at = None
    if args[:1] == ["--rounds"]:
        rounds_at = int(args[1])
        args = args[2:]
    expects = []
    if "--" in args:
        expects = args[args.index("--") + 1:]
        args = args[:args.index("--")]
    ledger_path, coord_path, site_args = args[0], args[1], args[2:]
    with open(ledger_path) as f:
        ledger = json.load(f)
    coord = effective(coord_path.split(","))
    if rounds_at is not None:
        coord = cut(coord, rounds_at, f"--rounds {rounds_at}")
    errors = []

    def check(what, got, want, approx=False):
        ok = close(got, want) if approx else got == want
        if not ok:
            errors.append(f"{what}: the ledger says {got!r}, want {want!r}")

    if ledger.get("format") != "entente-ledger" or ledger.get("version") != 3:
        errors.append(f"format/version: {ledger.get('format')!r} {ledger.get('version')!r}")
    rounds = [r for r in coord if r.get("event") == "round"]
    check("rounds_merged", ledger["rounds_merged"], len(rounds))
    entries = {e["site"]: e for e in ledger["sites"]}

    # 1. the coordinator's log
    for name, e in entries.items():
        tokens = accepted = joined = scored = 0
        gain = 0.0
        merged_rounds = set()
        for r in rounds:
            if name in r["sites"]:
                j = r["sites"].index(name)
                tokens += r["site_tokens"][j]
                accepted += 1
                merged_rounds.add(r["round"])
                if r["site_loss_gain"][j] is not None:
                    scored += 1
                    gain += r["site_loss_gain"][j]
            joined += name in r["members"]
        rejected = {}
        for r in coord:
            if r.get("event") == "rejected" and r["site"] == name:
                rejected[r["kind"]] = rejected.get(r["kind"], 0) + 1
        reports = [r for r in coord if r.get("event") == "report" and r["site"] == name]
        joins = [r for r in coord if r.get("event") == "joined" and r["site"] == name]
        if not joins:
            errors.append(f"{name}: no joined record in the coordinators' logs")
            continue
        check(f"{name}: tokens (coordinator's round records)", e["tokens"], tokens)
        check(f"{name}: accepted", e["accepted"], accepted)
        check(f"{name}: rounds_joined", e["rounds_joined"], joined)
        check(f"{name}: scored", e["scored"], scored)
        check(f"{name}: loss_gain", e["loss_gain"], gain, approx=True)
        for kind, n in e["rejected"].items():
            check(f"{name}: rejected {kind}", n, rejected.get(kind, 0))
        check(f"{name}: inner_steps (report records)", e["inner_steps"],
              sum(r["inner_steps"] for r in reports))
        check(f"{name}: compute_s (report records)", e["compute_s"],
              sum(r["compute_s"] for r in reports), approx=True)
        check(f"{name}: first_seen", e["first_seen"],
              {"time": joins[0]["time"], "round": joins[0]["first_round"]})
        if reports:
            check(f"{name}: last_seen", e["last_seen"],
                  {"time": reports[-1]["time"], "round": reports[-1]["round"]})
        e["_merged_rounds"] = merged_rounds
        print(f"site {name}: {e['tokens']} tokens merged, {e['inner_steps']} inner steps, "
              f"{e['compute_s']:.2f} s, {e['accepted']} accepted, rejected {e['rejected']}, "
              f"loss gain {e['loss_gain']:.4f} over {e['scored']} scored "
              f"(recomputed from {len(rounds)} round records)")

    # 2. the sites' own logs
    for arg in site_args:
        name, path = arg.split("=", 1)
        if name not in entries:
            errors.append(f"site {name} is not in the ledger")
            continue
        e = entries[name]
        own = [r for r in records(path) if r.get("event") == "round"]
        before, tokens = 0, 0
        for r in own:
            if r["round"] in e.get("_merged_rounds", set()):
                tokens += r["tokens"] - before
            before = r["tokens"]
        check(f"{name}: tokens (the site's round records)", e["tokens"], tokens)
        check(f"{name}: inner_steps (the site's round records)", e["inner_steps"],
              sum(r["inner_steps"] for r in own))
        check(f"{name}: compute_s (the site's round records)", e["compute_s"],
              sum(r["compute_s"] for r in own), approx=True)

    # 3. expectations
    for x in expects:
        site, kv = x.split(":", 1)
        key, n = kv.split("=")
        e = entries.get(site)
        if e is None:
            errors.append(f"site {site} is not in the ledger")
            continue
        got = e["rejected"][key] if key in e["rejected"] else e[key]
        check(f"{site}: {key}", got, int(n))

    for m in errors:
        print("ledger mismatch: " + m)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
