"""A client of the OpenID AuthZEN Authorization API 1.0, written from the specification alone
(sections 8 and 9: the search APIs, pagination, the PDP metadata), run against Mandate.

argv: base URL, a task credential, the id of its agent, an owner API token.
The task holds `read:cases`, `write:cases`, `read:kb` and `call:search_kb`; prints OK or fails.
"""
import sys

import requests

base, token, agent, owner_token = sys.argv[1:5]

# Section 9: the metadata, at the well-known URL derived from the PDP's identifier.
meta = requests.get(f"{base}/.well-known/authzen-configuration", timeout=10).json()
assert meta["policy_decision_point"] == base, meta
for k in ("access_evaluation_endpoint", "search_subject_endpoint",
          "search_resource_endpoint", "search_action_endpoint"):
    assert meta[k].startswith(base + "/"), (k, meta)

subject = {"type": "agent", "id": agent, "properties": {"token": token}}


def search(endpoint, body, headers=None):
    r = requests.post(meta[endpoint], json=body, timeout=10,
                      headers={"X-Request-ID": "search-1", **(headers or {})})
    assert r.status_code == 200, (endpoint, r.status_code, r.text)
    assert r.headers["X-Request-ID"] == "search-1"
    out = r.json()
    assert isinstance(out["results"], list) and "next_token" in out["page"], out
    return out


def all_pages(endpoint, body, limit):
    """Follows page.next_token until it is empty (section 8.2), page size `limit`."""
    seen, token_ = [], None
    for _ in range(20):
        page = {"limit": limit}
        if token_:
            page["token"] = token_
        out = search(endpoint, {**body, "page": page})
        assert len(out["results"]) <= limit
        seen += out["results"]
        token_ = out["page"]["next_token"]
        if not token_:
            return seen
    raise AssertionError("pagination did not end")


# Resource search (8.5): the resource id is omitted; the type is required.
found = all_pages("search_resource_endpoint",
                  {"subject": subject, "action": {"name": "read"}, "resource": {"type": "resource"}}, 1)
assert found == [{"type": "resource", "id": "cases"}, {"type": "resource", "id": "kb"}], found
tools = search("search_resource_endpoint",
               {"subject": subject, "action": {"name": "call"}, "resource": {"type": "tool"}})
assert tools["results"] == [{"type": "tool", "id": "search_kb"}], tools
# A page token is for its own search only.
first = search("search_resource_endpoint", {"subject": subject, "action": {"name": "read"},
                                            "resource": {"type": "resource"}, "page": {"limit": 1}})
r = requests.post(meta["search_resource_endpoint"], timeout=10, json={
    "subject": subject, "action": {"name": "write"}, "resource": {"type": "resource"},
    "page": {"token": first["page"]["next_token"]}})
assert r.status_code == 400, r.text

# Action search (8.6): what the subject may do on one resource. The pack forbids exporting from
# support tasks, and the task never held it: neither appears.
acts = search("search_action_endpoint", {"subject": subject, "resource": {"type": "resource", "id": "cases"}})
assert sorted(a["name"] for a in acts["results"]) == ["read", "write"], acts

# Subject search (8.4): the subject id is omitted; asked by the agent's owner.
subs = search("search_subject_endpoint",
              {"subject": {"type": "agent"}, "action": {"name": "read"}, "resource": {"type": "resource", "id": "cases"}},
              headers={"Authorization": f"Bearer {owner_token}"})
assert subs["results"] == [{"type": "agent", "id": agent}], subs
none = search("search_subject_endpoint",
              {"subject": {"type": "agent"}, "action": {"name": "export"}, "resource": {"type": "resource", "id": "cases"}},
              headers={"Authorization": f"Bearer {owner_token}"})
assert none["results"] == [] and none["page"]["next_token"] == "", none
# Without a person's token, subject search is refused (it names other principals).
r = requests.post(meta["search_subject_endpoint"], timeout=10, json={
    "subject": {"type": "agent"}, "action": {"name": "read"}, "resource": {"type": "resource", "id": "cases"}})
assert r.status_code == 401, r.text
# A bad credential is an HTTP error of the search (not a decision).
r = requests.post(meta["search_resource_endpoint"], timeout=10, json={
    "subject": {"type": "agent", "properties": {"token": "not-a-token"}}, "action": {"name": "read"},
    "resource": {"type": "resource"}})
assert r.status_code == 401, r.text
print("OK")
