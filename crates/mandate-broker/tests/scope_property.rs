//! Property: whatever the policies say (even "permit everything"), no action outside the task's
//! granted scope is ever allowed, for random tasks and random sequences of requests, through the
//! broker's real decision path (credential, scope gate, flow labels, Cedar, audit).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

use std::path::Path;
use std::sync::Arc;

use mandate_broker::{
    Broker, BrokerConfig, ClientAuth, DecideInput, JWT_BEARER, NewAgent, NewOwner, Principal,
    Target, TokenRequest,
};
use mandate_core::{Attestation, Scope, SystemClock};
use mandate_crypto::client::AgentKey;
use mandate_crypto::{KeyRing, SigningKey};
use mandate_policy::TargetKind;
use mandate_store::{Store, StoreOptions};
use proptest::prelude::*;

const ACTIONS: [&str; 4] = ["read", "write", "call", "export"];
const TARGETS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

fn policy_dir(variant: u8) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let pack = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    std::fs::copy(
        pack.join("mandate.cedarschema"),
        dir.path().join("mandate.cedarschema"),
    )
    .unwrap();
    if variant != 2 {
        for f in std::fs::read_dir(&pack).unwrap() {
            let p = f.unwrap().path();
            if p.extension().and_then(|e| e.to_str()) == Some("cedar") {
                std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    if variant >= 1 {
        std::fs::write(
            dir.path().join("99-permit-everything.cedar"),
            "@id(\"permit-everything\")\npermit (principal, action, resource);\n",
        )
        .unwrap();
    }
    dir
}

async fn run(variant: u8, granted: Vec<(usize, usize)>, requests: Vec<(usize, usize, i64)>) {
    let policies = policy_dir(variant);
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreOptions::sqlite(&data.path().join("m.db")))
        .await
        .unwrap();
    let issuer = "http://mandate.test";
    let broker = Broker::start(
        BrokerConfig::new(issuer, policies.path().to_path_buf()),
        store,
        KeyRing::new(SigningKey::generate()),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let admin = Principal::Admin {
        token_id: "t".into(),
        name: "test".into(),
    };
    broker
        .add_owner(
            &admin,
            NewOwner {
                id: "owner".into(),
                name: None,
            },
        )
        .await
        .unwrap();
    let everything: Vec<String> = ACTIONS
        .iter()
        .flat_map(|a| TARGETS.iter().map(move |t| format!("{a}:{t}")))
        .collect();
    let key = AgentKey::generate();
    broker
        .add_agent(
            &admin,
            NewAgent {
                id: "agent".into(),
                owner: Some("owner".into()),
                tier: "low".into(),
                envelope: everything.join(" "),
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
    let scope_text: Vec<String> = granted
        .iter()
        .map(|(a, t)| format!("{}:{}", ACTIONS[*a], TARGETS[*t]))
        .collect();
    let scope = Scope::parse(&scope_text.join(" ")).unwrap();
    let token = broker
        .token(&TokenRequest {
            grant_type: Some("client_credentials".into()),
            auth: ClientAuth {
                client_id: None,
                assertion_type: Some(JWT_BEARER.into()),
                assertion: Some(
                    key.assertion("agent", &format!("{issuer}/oauth/token"), 60)
                        .unwrap(),
                ),
                tls_cert: None,
            },
            scope: Some(scope_text.join(" ")),
            authorization_details: None,
            dpop: None,
            exchange: Default::default(),
            ..Default::default()
        })
        .await
        .unwrap()
        .access_token;
    for (a, t, amount) in requests {
        let (action, target) = (ACTIONS[a], TARGETS[t]);
        let mut arguments = serde_json::Map::new();
        arguments.insert("amount".into(), amount.into());
        let out = broker
            .decide(&DecideInput {
                token: token.clone(),
                dpop: None,
                client_cert: None,
                action: action.into(),
                target: Target {
                    kind: if t % 2 == 0 {
                        TargetKind::Tool
                    } else {
                        TargetKind::Resource
                    },
                    id: target.into(),
                },
                context: Default::default(),
                arguments,
                approval_id: None,
                wait: 0,
            })
            .await;
        match out {
            Ok(o) if o.allowed => assert!(
                scope.allows(action, target),
                "`{action}:{target}` allowed outside scope {scope} (policies variant {variant}): {o:?}"
            ),
            Ok(_) => {}
            // The task may be suspended by repeated denials; then nothing is allowed at all.
            Err(mandate_broker::DecideError::InvalidToken(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn nothing_outside_the_granted_scope_is_ever_allowed(
        variant in 0u8..3,
        granted in proptest::collection::vec((0usize..4, 0usize..4), 1..6),
        requests in proptest::collection::vec((0usize..4, 0usize..4, -10i64..1000), 1..25),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(variant, granted, requests));
    }
}
