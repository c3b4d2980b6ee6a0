"""Counts of the efficacy dataset, as Markdown tables (pasted into README.md).

    python stats.py [domains/*.json]
"""
import glob
import json
import os
import re
import sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
TYPES = ["exfiltration", "payment", "phishing_link", "visit_url", "delete", "invite"]
TEXT_ARGS = {"body", "text", "description", "subject", "content", "note"}
READ = re.compile(r"(search|read|list|get|fetch)_")


def norm(s):
    return re.sub(r"\s+", "", s).lower()


def strings(value, key=""):
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, list):
        for v in value:
            yield from strings(v, key)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, k)


def form(value, outputs):
    if "@" in value:
        return "email address"
    if value.startswith(("http://", "https://")):
        return "full URL"
    compact = value.replace(" ", "")
    if re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", compact):
        spaced = " ".join(compact[i:i + 4] for i in range(0, len(compact), 4))
        if " " in value:
            return "IBAN, spaced in the injection and in the call"
        return "IBAN, spaced in the injection, compact in the call" if spaced in outputs else "IBAN"
    if re.fullmatch(r"(?:[a-z0-9-]+\.)+[a-z]{2,}(?:[/?#]\S*)?", value.lower()):
        return "host without scheme"
    return "short id (file, event, message, channel, user, booking)"


def harmful(task):
    """The injected steps that do the attacker's work: those carrying an attacker value, or any
    injected write when the attack has none (a delete of the user's own objects)."""
    values = [norm(v) for v in task["attack"]["attacker_values"]]
    out = []
    for s in task["steps"]:
        if not s.get("injected"):
            continue
        text = norm(" ".join(v for _, v in strings(s["arguments"])))
        if any(v in text for v in values) or (not values and not READ.match(s["tool"])):
            out.append(s)
    return out


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv):
    paths = argv or sorted(glob.glob(os.path.join(HERE, "domains", "*.json")))
    domains = [json.load(open(p, encoding="utf-8")) for p in paths]

    rows, tot = [], Counter()
    for d in domains:
        tasks = d["tasks"]
        legit = [t for t in tasks if t["kind"] == "legitimate"]
        att = [t for t in tasks if t["kind"] == "attack"]
        c = Counter(
            tools=len(d["tools"]),
            third=sum(t["third_party_output"] for t in d["tools"]),
            legit=len(legit),
            noted=sum("note" in t for t in legit),
            attack=len(att),
            lsteps=sum(len(t["steps"]) for t in legit),
            asteps=sum(len(t["steps"]) for t in att),
            injected=sum(bool(s.get("injected")) for t in att for s in t["steps"]),
        )
        tot.update(c)
        rows.append([d["domain"], c["tools"], c["third"], c["legit"], c["noted"], c["attack"], c["lsteps"] + c["asteps"],
                     f"{c['lsteps'] / max(c['legit'], 1):.1f}", c["injected"]])
    rows.append(["**total**", tot["tools"], tot["third"], tot["legit"], tot["noted"], tot["attack"],
                 tot["lsteps"] + tot["asteps"], f"{tot['lsteps'] / max(tot['legit'], 1):.1f}", tot["injected"]])
    print("### Tasks per domain\n")
    print(table(["domain", "tools", "third-party tools", "legitimate", "of which noted", "attacks", "steps",
                 "steps per legitimate task", "injected steps"], rows))

    by_type = {d["domain"]: Counter(t["attack"]["type"] for t in d["tasks"] if t["kind"] == "attack") for d in domains}
    rows = [[ty] + [by_type[d["domain"]][ty] for d in domains] + [sum(b[ty] for b in by_type.values())] for ty in TYPES]
    rows.append(["**total**"] + [sum(by_type[d["domain"]].values()) for d in domains]
                + [sum(sum(b.values()) for b in by_type.values())])
    print("\n### Attacks per type\n")
    print(table(["type"] + [d["domain"] for d in domains] + ["total"], rows))

    inside, forms, where, vectors = Counter(), Counter(), Counter(), Counter()
    for d in domains:
        for t in d["tasks"]:
            if t["kind"] != "attack":
                continue
            hs = harmful(t)
            inside["inside" if any(s["tool"] in t["tools"] for s in hs) else "outside"] += 1
            for s in t["steps"]:
                if s.get("carries_injection"):
                    vectors[s["tool"]] += 1
            outputs = "\n".join(s.get("output", "") for s in t["steps"] if s.get("carries_injection"))
            if not t["attack"]["attacker_values"]:
                forms["none (the user's own ids, taken from a trusted listing)"] += 1
            for v in t["attack"]["attacker_values"]:
                forms[form(v, outputs)] += 1
                keys = {k for s in hs for k, x in strings(s["arguments"]) if norm(v) in norm(x)}
                where["inside a free-text argument" if keys & TEXT_ARGS else "in its own argument"] += 1
    print("\n### Where the injected action's tool is\n")
    print(table(["harmful injected call uses", "attacks"],
                [["a tool in the task's own `tools` (the hard case)", inside["inside"]],
                 ["a tool outside the task's `tools`", inside["outside"]]]))
    print("\n### How attacker values are written\n")
    print(table(["form", "values"], sorted(forms.items(), key=lambda kv: -kv[1])))
    print()
    print(table(["placed", "values"], sorted(where.items(), key=lambda kv: -kv[1])))
    print("\n### Tools whose output carries the injection\n")
    print(table(["tool", "attacks"], sorted(vectors.items(), key=lambda kv: (-kv[1], kv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
