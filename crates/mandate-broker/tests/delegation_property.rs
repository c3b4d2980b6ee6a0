//! Property: over random delegation trees and scope requests, through the broker's real token
//! exchange, no descendant ever holds an action, target or expiry its ancestors did not; a
//! sub-task is granted exactly when its request fits its parent and its agent's envelope within
//! the depth limit; and revoking any task leaves no live credential below it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use mandate_broker::{
    ACCESS_TOKEN_TYPE, Broker, BrokerConfig, Caller, ClientAuth, DecideError, DecideInput,
    ExchangeParams, JWT_BEARER, JWT_TOKEN_TYPE, NewAgent, NewOwner, Principal, TOKEN_EXCHANGE,
    Target, TokenRequest,
};
use mandate_core::{Attestation, SystemClock};
use mandate_crypto::client::AgentKey;
use mandate_crypto::{KeyRing, SigningKey};
use mandate_policy::TargetKind;
use mandate_store::{Store, StoreOptions};
use proptest::prelude::*;

const ACTIONS: [&str; 3] = ["read", "write", "call"];
const TARGETS: [&str; 3] = ["alpha", "beta", "gamma"];
const AGENTS: usize = 4;
/// The shipped pack's `delegation-depth-limit`.
const DEPTH_LIMIT: usize = 3;

type Pairs = BTreeSet<(usize, usize)>;

fn text(p: &Pairs) -> String {
    p.iter()
        .map(|(a, t)| format!("{}:{}", ACTIONS[*a], TARGETS[*t]))
        .collect::<Vec<_>>()
        .join(" ")
}

fn policy_dir() -> tempfile::TempDir {
    // The shipped pack, plus a blanket permit so only Mandate's own bounds and the pack's
    // forbids can refuse anything.
    let dir = tempfile::tempdir().unwrap();
    let pack = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    for f in std::fs::read_dir(&pack).unwrap() {
        let p = f.unwrap().path();
        let ext = p.extension().and_then(|e| e.to_str());
        if matches!(ext, Some("cedar" | "cedarschema")) {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        dir.path().join("99-permit-everything.cedar"),
        "@id(\"permit-everything\")\npermit (principal, action, resource);\n",
    )
    .unwrap();
    dir
}

struct Node {
    token: String,
    parent: Option<usize>,
    agent: usize,
    scope: Pairs,
    exp: i64,
}

fn admin() -> Principal {
    Principal::Admin {
        token_id: "t".into(),
        name: "test".into(),
    }
}

async fn run(envelopes: Vec<Pairs>, steps: Vec<(usize, usize, Pairs, i64)>, revoke: usize) {
    let policies = policy_dir();
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreOptions::sqlite(&data.path().join("m.db")))
        .await
        .unwrap();
    let issuer = "http://mandate.test";
    let endpoint = format!("{issuer}/oauth/token");
    let broker = Broker::start(
        BrokerConfig::new(issuer, policies.path().to_path_buf()),
        store,
        KeyRing::new(SigningKey::generate()),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    broker
        .add_owner(
            &admin(),
            NewOwner {
                id: "owner".into(),
                name: None,
            },
        )
        .await
        .unwrap();
    let mut keys = Vec::new();
    for (i, env) in envelopes.iter().enumerate() {
        let key = AgentKey::generate();
        broker
            .add_agent(
                &admin(),
                NewAgent {
                    id: format!("agent{i}"),
                    owner: Some("owner".into()),
                    tier: "low".into(),
                    envelope: text(env),
                    envelope_arguments: Default::default(),
                    attestations: vec![Attestation::PrivateKeyJwt {
                        public_key: key.public_key(),
                    }],
                    default_intent: None,
                    description: None,
                },
            )
            .await
            .unwrap();
        keys.push(key);
    }
    let assertion = |i: usize| {
        Some(
            keys[i]
                .assertion(&format!("agent{i}"), &endpoint, 60)
                .unwrap(),
        )
    };
    let person = Caller::Person(admin());
    let exp_of = |claims: &serde_json::Value| claims["exp"].as_i64().unwrap();

    // The root: agent 0 opens a task with its whole envelope.
    let root = broker
        .token(&TokenRequest {
            grant_type: Some("client_credentials".into()),
            auth: ClientAuth {
                client_id: None,
                assertion_type: Some(JWT_BEARER.into()),
                assertion: assertion(0),
                tls_cert: None,
            },
            scope: Some(text(&envelopes[0])),
            ..Default::default()
        })
        .await
        .unwrap();
    let claims = broker
        .introspect(&person, &root.access_token)
        .await
        .unwrap();
    let mut nodes = vec![Node {
        token: root.access_token,
        parent: None,
        agent: 0,
        scope: envelopes[0].clone(),
        exp: exp_of(&claims),
    }];

    for (parent_pick, agent, asked, ttl) in steps {
        let parent = parent_pick % nodes.len();
        let depth = {
            let (mut d, mut at) = (0, parent);
            while let Some(p) = nodes[at].parent {
                d += 1;
                at = p;
            }
            d + 1
        };
        let result = broker
            .token(&TokenRequest {
                grant_type: Some(TOKEN_EXCHANGE.into()),
                scope: Some(text(&asked)),
                exchange: ExchangeParams {
                    subject_token: Some(nodes[parent].token.clone()),
                    subject_token_type: Some(ACCESS_TOKEN_TYPE.into()),
                    actor_token: assertion(agent),
                    actor_token_type: Some(JWT_TOKEN_TYPE.into()),
                    ..Default::default()
                },
                authorization_details: Some(
                    serde_json::json!([{"type": "mandate_task", "ttl": ttl}]).to_string(),
                ),
                ..Default::default()
            })
            .await;
        let fits = asked.is_subset(&nodes[parent].scope)
            && asked.is_subset(&envelopes[agent])
            && depth <= DEPTH_LIMIT;
        let parent_left = nodes[parent].exp - now_secs();
        match result {
            Ok(r) => {
                assert!(
                    fits,
                    "granted {} to agent{agent} from {} (envelope {}, depth {depth})",
                    text(&asked),
                    text(&nodes[parent].scope),
                    text(&envelopes[agent])
                );
                assert!(
                    ttl <= parent_left + 1,
                    "ttl {ttl} beyond parent's {parent_left}"
                );
                let c = broker.introspect(&person, &r.access_token).await.unwrap();
                let granted: Pairs = c["scope"]
                    .as_str()
                    .unwrap()
                    .split_whitespace()
                    .map(|tok| {
                        let (a, t) = tok.split_once(':').unwrap();
                        (
                            ACTIONS.iter().position(|x| *x == a).unwrap(),
                            TARGETS.iter().position(|x| *x == t).unwrap(),
                        )
                    })
                    .collect();
                // Every ancestor holds at least what the child holds, and lives as long.
                let mut at = Some(parent);
                while let Some(i) = at {
                    assert!(granted.is_subset(&nodes[i].scope));
                    assert!(exp_of(&c) <= nodes[i].exp);
                    at = nodes[i].parent;
                }
                nodes.push(Node {
                    token: r.access_token,
                    parent: Some(parent),
                    agent,
                    scope: granted,
                    exp: exp_of(&c),
                });
            }
            // Refused: must be because it did not fit, or asked to outlive its parent.
            Err(e) => assert!(
                !fits || ttl > parent_left,
                "refused although it fits (depth {depth}): {e}"
            ),
        }
    }

    // Every live credential acts only within its own scope; then revoke one node.
    let decide = |token: String, a: usize, t: usize| {
        let broker = &broker;
        async move {
            broker
                .decide(&DecideInput {
                    token,
                    dpop: None,
                    client_cert: None,
                    action: ACTIONS[a].into(),
                    target: Target {
                        kind: TargetKind::Tool,
                        id: TARGETS[t].into(),
                    },
                    context: Default::default(),
                    arguments: Default::default(),
                    approval_id: None,
                    wait: 0,
                })
                .await
        }
    };
    for n in &nodes {
        if let Some(&(a, t)) = n.scope.iter().next() {
            assert!(decide(n.token.clone(), a, t).await.unwrap().allowed);
        }
    }
    let victim = revoke % nodes.len();
    broker
        .revoke_token(&person, &nodes[victim].token)
        .await
        .unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let mut below = i == victim;
        let mut at = n.parent;
        while let Some(p) = at {
            below |= p == victim;
            at = nodes[p].parent;
        }
        let (a, t) = n.scope.iter().next().copied().unwrap_or((0, 0));
        let out = decide(n.token.clone(), a, t).await;
        if below {
            assert!(
                matches!(out, Err(DecideError::InvalidToken(_))),
                "node {i} (agent{}) below revoked node {victim} still decides: {out:?}",
                n.agent
            );
            let c = broker.introspect(&person, &n.token).await.unwrap();
            assert_eq!(c["active"], false);
        } else if !n.scope.is_empty() {
            assert!(out.unwrap().allowed, "node {i} is not below {victim}");
        }
    }
}

fn now_secs() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn pairs() -> impl Strategy<Value = Pairs> {
    proptest::collection::btree_set((0usize..3, 0usize..3), 1..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    #[test]
    fn delegation_never_amplifies_and_revocation_reaches_every_descendant(
        envelopes in proptest::collection::vec(pairs(), AGENTS),
        steps in proptest::collection::vec(
            (0usize..16, 0usize..AGENTS, pairs(), prop_oneof![Just(60i64), Just(300), Just(900)]),
            1..9,
        ),
        revoke in 0usize..16,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(envelopes, steps, revoke));
    }
}
