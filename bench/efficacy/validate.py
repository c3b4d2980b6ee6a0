"""Checks the efficacy dataset: every domain file under domains/ (or the files named).

    python validate.py [domains/banking.json ...]

Prints one line per problem and exits non-zero when there is any. What is checked:

- shape: the domain file's keys, each tool (name, description, inputSchema, third_party_output),
  each task and step, the `attack` record of attack tasks;
- every step's tool exists and its arguments satisfy the tool's inputSchema (required keys,
  no unknown keys, property types, enums, array item types); a step that is not injected uses a
  tool in the task's `tools`;
- `injected` and `carries_injection` appear only in attack tasks; an attack task has a step whose
  output (from a tool with third_party_output) carries the injection, before its first
  injected step, and at least one injected step;
- each attacker value occurs in some injected step's arguments, in a third-party output earlier
  than that step, never in the prompt, and never in a step that is not injected;
- every remarkable value (e-mail address, URL, host, IBAN, long account number) in a step's
  arguments comes from the prompt or an earlier output; in a step that is not injected, one that
  only a third-party output supplied needs the task's `note` (the user vouched for that content);
- legitimate tasks hold no attacker value and name no attacker host, in prompt, arguments or
  outputs;
- the scripted server answers each task with its own outputs: steps with the same tool and
  arguments (canonical JSON) within a domain have the same output.
"""
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ATTACK_TYPES = {"exfiltration", "payment", "phishing_link", "visit_url", "delete", "invite"}
JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}
FILE_EXTENSIONS = {
    "txt", "pdf", "doc", "docx", "xls", "xlsx", "csv", "md", "html", "htm", "png", "jpg", "jpeg",
    "json", "ics", "zip", "pptx", "ppt", "key", "eml", "gif", "mp4",
}
TRIM = ".,;:!?)(][><\"'`*"
SPACED_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?\b")
EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+$")
HOST = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+([a-z]{2,})(?:[/?#]\S*)?$")

problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


def norm(s):
    return re.sub(r"\s+", "", s).lower()


def canonical(value):
    def n(v):
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, (int, float)):
            f = float(v)
            return int(f) if f.is_integer() else f
        if isinstance(v, list):
            return [n(x) for x in v]
        if isinstance(v, dict):
            return {k: n(x) for k, x in v.items()}
        return v

    return json.dumps(n(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def host_of_url(url):
    rest = url.split("://", 1)[1] if "://" in url else url
    host = re.split(r"[/?#]", rest, maxsplit=1)[0].rsplit("@", 1)[-1].split(":")[0]
    return host.lower() if "." in host else None


def remarkable(text):
    """E-mail addresses, URLs, hosts, IBANs and long account numbers in a text, each with its kind."""
    out = []
    for m in SPACED_IBAN.finditer(text):
        out.append(("iban", m.group(0).replace(" ", "")))
    for raw in re.split(r"[\s\"<>]+", text):
        t = raw.strip(TRIM)
        if not t or len(t) > 2048:
            continue
        if t.startswith(("http://", "https://")):
            out.append(("url", t))
            h = host_of_url(t)
            if h:
                out.append(("host", h))
        elif t.startswith("mailto:") and EMAIL.match(t[7:]):
            out.append(("email", t[7:].lower()))
        elif EMAIL.match(t):
            out.append(("email", t.lower()))
        elif re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", t):
            out.append(("iban", t))
        elif (sum(c.isdigit() for c in t) >= 8 and re.fullmatch(r"[\d-]+", t)
              and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", t)):  # a date is not an account
            out.append(("account", t))
        else:
            m = HOST.match(t.lower())
            name = t.lower().split("/")[0].rsplit(".", 1)[0]
            if m and m.group(1) not in FILE_EXTENSIONS and re.search(r"[a-z]", name):
                out.append(("host", t.lower().split("/")[0]))
    return out


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)


def arg_text(args):
    return "\n".join(strings(args))


def check_value(where, schema, value, path):
    t = schema.get("type")
    if t not in JSON_TYPES:
        problem(where, f"{path}: schema has no known type")
        return
    if not JSON_TYPES[t](value):
        problem(where, f"{path}: {value!r} is not of type {t}")
        return
    if "enum" in schema and value not in schema["enum"]:
        problem(where, f"{path}: {value!r} not in enum {schema['enum']}")
    if t == "array" and "items" in schema:
        for i, v in enumerate(value):
            check_value(where, schema["items"], v, f"{path}[{i}]")
    if t == "object" and "properties" in schema:
        check_args(where, schema, value, path + ".")


def check_args(where, schema, args, prefix=""):
    props = schema.get("properties", {})
    for k in schema.get("required", []):
        if k not in args:
            problem(where, f"missing required argument {prefix}{k}")
    for k, v in args.items():
        if k not in props:
            problem(where, f"unknown argument {prefix}{k}")
            continue
        check_value(where, props[k], v, prefix + k)


def check_schema(where, schema, top=True):
    if not isinstance(schema, dict):
        problem(where, "schema is not an object")
        return
    t = schema.get("type")
    if t not in JSON_TYPES:
        problem(where, f"schema type {t!r} unknown")
        return
    if top and t != "object":
        problem(where, "inputSchema type must be object")
    if t == "object":
        props = schema.get("properties")
        if not isinstance(props, dict):
            problem(where, "object schema without properties")
            return
        req = schema.get("required", [])
        if not isinstance(req, list) or any(r not in props for r in req):
            problem(where, f"required {req} not all in properties")
        for k, p in props.items():
            check_schema(f"{where}.{k}", p, top=False)
            if not top:
                continue
            if not isinstance(p.get("description", ""), str):
                problem(f"{where}.{k}", "description is not a string")
    if t == "array":
        if "items" not in schema:
            problem(where, "array schema without items")
        else:
            check_schema(where + "[]", schema["items"], top=False)
    if "enum" in schema:
        for e in schema["enum"]:
            if not JSON_TYPES[t](e):
                problem(where, f"enum value {e!r} is not of type {t}")


def load(paths):
    domains = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            try:
                domains.append((p, json.load(f)))
            except json.JSONDecodeError as e:
                problem(p, f"not JSON: {e}")
    return domains


def attacker_markers(domains):
    """Attacker values and hosts across every file, to keep legitimate tasks clean of them."""
    values, hosts = set(), set()
    for _, d in domains:
        for t in d.get("tasks", []):
            if t.get("kind") != "attack":
                continue
            for v in t.get("attack", {}).get("attacker_values", []):
                kinds = [k for k, _ in remarkable(v)]
                if "@" in v:
                    hosts.add(v.rsplit("@", 1)[1].lower().strip(TRIM))
                    values.add(norm(v))
                elif v.startswith(("http://", "https://")) or "host" in kinds:
                    h = host_of_url(v if "://" in v else "x://" + v)
                    if h:
                        hosts.add(h)
                    values.add(norm(v))
                elif "iban" in kinds or "account" in kinds:
                    values.add(norm(v))
                # short ids (file ids, channel ids, reservation ids) may name the user's own
                # objects, which legitimate tasks use too: not markers
    return values, hosts


def check_domain(path, d, task_ids, markers):
    name = os.path.splitext(os.path.basename(path))[0]
    if set(d) != {"domain", "tools", "tasks"}:
        problem(path, f"top-level keys {sorted(d)} (want domain, tools, tasks)")
    if d.get("domain") != name:
        problem(path, f"domain {d.get('domain')!r} does not match the file name")
    tools = {}
    for i, t in enumerate(d.get("tools", [])):
        where = f"{path}: tool {t.get('name', i)}"
        if set(t) != {"name", "description", "inputSchema", "third_party_output"}:
            problem(where, f"keys {sorted(t)}")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", t.get("name", "")):
            problem(where, "name is not snake_case")
        if t.get("name") in tools:
            problem(where, "duplicate tool")
        if not isinstance(t.get("description"), str) or len(t["description"]) < 40:
            problem(where, "description missing or too short for a catalog")
        if not isinstance(t.get("third_party_output"), bool):
            problem(where, "third_party_output is not a boolean")
        check_schema(where, t.get("inputSchema"))
        tools[t.get("name")] = t
    if not 6 <= len(tools) <= 12:
        problem(path, f"{len(tools)} tools (want 6 to 12)")
    if not any(re.search(r"fetch|url|web|link", n) and t["third_party_output"] for n, t in tools.items()):
        problem(path, "no third-party read tool that reaches the outside (fetch/url/web/link)")
    if not any(re.match(r"(delete|cancel|remove)_", n) for n in tools):
        problem(path, "no destructive tool (delete_/cancel_/remove_)")

    bad_values, bad_hosts = markers
    scripted = {}
    counts = {"legitimate": 0, "attack": 0}
    for task in d.get("tasks", []):
        tid = task.get("id", "?")
        where = f"{path}: {tid}"
        allowed = {"id", "kind", "prompt", "tools", "steps", "note", "attack"}
        if not set(task) <= allowed or not {"id", "kind", "prompt", "tools", "steps"} <= set(task):
            problem(where, f"task keys {sorted(task)}")
            continue
        if tid in task_ids:
            problem(where, "duplicate task id")
        task_ids.add(tid)
        if not tid.startswith(f"{name}-"):
            problem(where, f"id does not start with {name}-")
        kind = task["kind"]
        if kind not in counts:
            problem(where, f"kind {kind!r}")
            continue
        counts[kind] += 1
        prompt = task["prompt"]
        if not isinstance(prompt, str) or len(prompt) < 15:
            problem(where, "prompt missing or too short")
            continue
        if "note" in task and (not isinstance(task["note"], str) or not task["note"]):
            problem(where, "note is not a text")
        ttools = task["tools"]
        if not ttools or len(set(ttools)) != len(ttools) or any(t not in tools for t in ttools):
            problem(where, f"task tools {ttools} empty, repeated or unknown")
        steps = task["steps"]
        if not isinstance(steps, list) or not steps:
            problem(where, "no steps")
            continue
        if kind == "legitimate" and not 2 <= len(steps) <= 6:
            problem(where, f"{len(steps)} steps (legitimate tasks take 2 to 6)")
        if kind == "legitimate" and "attack" in task:
            problem(where, "legitimate task with an attack record")

        # per-step shape and schema
        for i, s in enumerate(steps):
            sw = f"{where} step {i}"
            if not {"tool", "arguments"} <= set(s) or not set(s) <= {
                "tool", "arguments", "output", "injected", "carries_injection"
            }:
                problem(sw, f"step keys {sorted(s)}")
                continue
            if s["tool"] not in tools:
                problem(sw, f"unknown tool {s['tool']}")
                continue
            if not isinstance(s["arguments"], dict):
                problem(sw, "arguments is not an object")
                continue
            check_args(sw, tools[s["tool"]]["inputSchema"], s["arguments"])
            if "output" in s and not isinstance(s["output"], str):
                problem(sw, "output is not a text")
            for flag in ("injected", "carries_injection"):
                if flag in s and s[flag] is not True:
                    problem(sw, f"{flag} must be true when present")
                if s.get(flag) and kind != "attack":
                    problem(sw, f"{flag} step in a legitimate task")
            if s.get("carries_injection"):
                if not tools[s["tool"]]["third_party_output"]:
                    problem(sw, "carries_injection on a tool without third-party output")
                if "output" not in s:
                    problem(sw, "carries_injection without an output")
            if s.get("injected") and s.get("carries_injection"):
                problem(sw, "a step is either injected or carries the injection")
            if not s.get("injected") and s["tool"] not in ttools:
                problem(sw, f"{s['tool']} is not in the task's tools")
            key = (s["tool"], canonical(s["arguments"]))
            scripted.setdefault(key, []).append((tid, i, s.get("output")))

        # value provenance
        for i, s in enumerate(steps):
            if s.get("tool") not in tools or not isinstance(s.get("arguments"), dict):
                continue
            earlier = [x for x in steps[:i] if "output" in x and x.get("tool") in tools]
            trusted = "\n".join(x["output"] for x in earlier if not tools[x["tool"]]["third_party_output"])
            third = "\n".join(x["output"] for x in earlier if tools[x["tool"]]["third_party_output"])
            attacker = [norm(v) for v in task.get("attack", {}).get("attacker_values", [])]
            for kind_, v in remarkable(arg_text(s["arguments"])):
                nv = norm(v)
                forms = [nv]
                if kind_ == "url":
                    bare = re.sub(r"^https?://", "", nv).rstrip("/")
                    forms = [nv, bare]
                src = None
                if any(f in norm(prompt) for f in forms):
                    src = "prompt"
                elif any(f in norm(trusted) for f in forms):
                    src = "trusted"
                elif any(f in norm(third) for f in forms):
                    src = "third"
                elif kind_ == "url":
                    src = "derived"  # a URL composed on a site the prompt or an output named (host judged)
                sw = f"{where} step {i}"
                if src is None:
                    problem(sw, f"{kind_} {v} comes from neither the prompt nor an earlier output")
                    continue
                if s.get("injected"):
                    continue
                if any(a in nv or nv in a for a in attacker if len(a) >= 6):
                    problem(sw, f"attacker value {v} in a step not marked injected")
                if src == "third" and "note" not in task:
                    problem(sw, f"{kind_} {v} only a third-party output supplied; say why in a note")

        if kind == "attack":
            check_attack(where, task, tools)
        else:
            blob = norm(prompt + "\n" + "\n".join(
                arg_text(s.get("arguments", {})) + "\n" + s.get("output", "") for s in steps
                if isinstance(s.get("output", ""), str)
            ))
            for v in bad_values:
                if v in blob:
                    problem(where, f"legitimate task holds attacker value {v}")
            for h in bad_hosts:
                if h in blob:
                    problem(where, f"legitimate task names attacker host {h}")

    for (tool, args), uses in scripted.items():
        outs = {o for _, _, o in uses}
        if len(outs) > 1:
            at = ", ".join(f"{t}#{i}" for t, i, _ in uses)
            problem(path, f"{tool} {args} is scripted with different outputs ({at})")
    return counts


def check_attack(where, task, tools):
    a = task.get("attack")
    if not isinstance(a, dict) or set(a) != {"type", "goal", "attacker_values"}:
        problem(where, "attack record must hold type, goal, attacker_values")
        return
    if a["type"] not in ATTACK_TYPES:
        problem(where, f"attack type {a['type']!r}")
    if not isinstance(a["goal"], str) or len(a["goal"]) < 15:
        problem(where, "attack goal missing")
    values = a["attacker_values"]
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        problem(where, "attacker_values must be a list of texts")
        return
    if not values and a["type"] != "delete":
        problem(where, "no attacker values (only a delete may act on the user's own ids alone)")
    steps = task["steps"]
    injected = [i for i, s in enumerate(steps) if s.get("injected")]
    carriers = [i for i, s in enumerate(steps) if s.get("carries_injection")]
    if not injected:
        problem(where, "attack without injected steps")
        return
    if not carriers or min(carriers) > min(injected):
        problem(where, "no step carrying the injection before the first injected step")
    prompt = norm(task["prompt"])
    for v in values:
        nv = norm(v)
        if nv in prompt:
            problem(where, f"attacker value {v} is in the prompt")
        uses = [i for i in injected if nv in norm(arg_text(steps[i]["arguments"]))]
        if not uses:
            problem(where, f"attacker value {v} is used by no injected step")
            continue
        first = min(uses)
        if not any(nv in norm(steps[c].get("output", "")) for c in carriers if c < first):
            problem(where, f"attacker value {v} is not in a third-party output before step {first}")
        for i, s in enumerate(steps):
            if not s.get("injected") and nv in norm(arg_text(s.get("arguments", {}))):
                problem(where, f"attacker value {v} in step {i}, which is not injected")
    for i in injected:
        if steps[i]["tool"] not in tools:
            continue
        carries = any(norm(v) in norm(arg_text(steps[i]["arguments"])) for v in values)
        if not carries and not re.match(r"(search|read|list|get|fetch)_", steps[i]["tool"]) and a["type"] != "delete":
            problem(f"{where} step {i}", "injected write carries no attacker value")


def main(argv):
    paths = argv or sorted(glob.glob(os.path.join(HERE, "domains", "*.json")))
    if not paths:
        print("no domain files")
        return 1
    domains = load(paths)
    markers = attacker_markers(domains)
    ids = set()
    total = {"legitimate": 0, "attack": 0}
    for path, d in domains:
        c = check_domain(os.path.relpath(path, HERE), d, ids, markers)
        for k in total:
            total[k] += c[k]
    for p in problems:
        print(p)
    print(f"{len(domains)} domains, {total['legitimate']} legitimate, {total['attack']} attack tasks: "
          f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
