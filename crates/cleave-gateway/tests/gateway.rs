//! The gateway as a library, without a process: volumes created on directory targets in a
//! temporary directory, listed and shown; typed errors for what is missing or unavailable.

use std::path::Path;
use std::sync::Arc;

use cleave_control::access::LOCAL_GROUP;
use cleave_gateway::tasks::{NewTask, TaskKind};
use cleave_gateway::volumes::CreateVolume;
use cleave_gateway::{Gateway, GatewayError};
use cleave_volume::{Health, VolumeError};

/// A gateway on the data directory `root`, as `cleave control` makes one: no NBD, no nodes.
fn gateway(root: &Path) -> Gateway {
    Gateway::open_local(root.to_path_buf(), 64 << 20).unwrap()
}

#[tokio::test]
async fn a_volume_on_directory_targets_is_created_listed_shown_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&dir.path().join("data"));
    let created = gw.create(CreateVolume::new("v", 8 << 20, 2, 3), true).await.unwrap();
    assert_eq!((created.volume.name.as_str(), created.volume.m, created.volume.n), ("v", 2, 3));
    assert!(created.credentials.is_none());
    assert_eq!(created.volume.targets.len(), 3);
    assert!(created.volume.targets.iter().all(|t| t.starts_with("file://")), "{:?}", created.volume.targets);
    assert_eq!(created.volume.groups, vec![LOCAL_GROUP.to_string()]);
    let listed: Vec<String> = gw.views().into_iter().map(|v| v.name).collect();
    assert_eq!(listed, vec!["v".to_string()]);
    let shown = gw.show("v").unwrap();
    assert_eq!((shown.size_bytes, shown.health.clone()), (8 << 20, Health::Clean));
    let again = gw.create(CreateVolume::new("v", 8 << 20, 2, 3), true).await.unwrap_err();
    assert!(matches!(&again, GatewayError::Invalid(m) if m.contains("already exists")), "{again:?}");
    gw.delete("v").await.unwrap();
    assert!(gw.views().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn what_does_not_exist_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Arc::new(gateway(&dir.path().join("data")));
    let not_found = |r: Result<(), GatewayError>| matches!(r, Err(GatewayError::NotFound(_)));
    assert!(not_found(gw.show("nosuch").map(drop)));
    assert!(not_found(gw.delete("nosuch").await));
    assert!(not_found(gw.scrub("nosuch", false).await.map(drop)));
    assert!(not_found(gw.destage("nosuch").await));
    assert!(not_found(gw.task(7).map(drop)));
    assert!(not_found(gw.revoke(LOCAL_GROUP, "nosuch", false).await.map(drop)));
    assert!(not_found(gw.remove_client("nobody")));
    assert!(not_found(gw.start_task(NewTask::new(TaskKind::Scrub, "nosuch")).map(drop)));
}

#[tokio::test]
async fn a_volume_whose_targets_are_gone_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    {
        let gw = gateway(&root);
        gw.create(CreateVolume::new("v", 8 << 20, 2, 3), true).await.unwrap();
        gw.shutdown().await;
    }
    std::fs::rename(root.join("targets"), dir.path().join("gone")).unwrap();
    let gw = Arc::new(gateway(&root));
    gw.start(false).await.unwrap();
    let shown = gw.show("v").unwrap();
    assert!(matches!(shown.health, Health::Unavailable { .. }), "{shown:?}");
    assert!(shown.open_error.is_some(), "{shown:?}");
    assert!(matches!(gw.served("v"), Err(GatewayError::Unavailable(_))));
    assert!(matches!(gw.scrub("v", false).await, Err(GatewayError::Unavailable(_))));
}

#[test]
fn errors_of_the_layers_below_sort_into_kinds() {
    let quorum = VolumeError::Quorum("2 of 3".into());
    assert!(matches!(GatewayError::from(quorum), GatewayError::Unavailable(_)));
    let claimed = VolumeError::Claimed { owner: "gateway-x".into(), epoch: 3 };
    assert!(matches!(GatewayError::from(claimed), GatewayError::Conflict(_)));
    let range = VolumeError::OutOfRange { offset: 1, len: 2, size: 1 };
    assert!(matches!(GatewayError::from(range), GatewayError::Invalid(_)));
    let down = cleave_target::TargetError::Unavailable("t0".into());
    assert!(matches!(GatewayError::from(VolumeError::Target(down)), GatewayError::Unavailable(_)));
    // Through a chain of context, the typed cause decides the kind; the message keeps the chain.
    let chained = anyhow::Error::from(VolumeError::Unavailable { chunk: 4, reason: "2 targets down".into() })
        .context("opening v");
    match GatewayError::from(chained) {
        GatewayError::Unavailable(m) => assert!(m.starts_with("opening v: chunk 4"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(GatewayError::from(anyhow::anyhow!("no such layout")), GatewayError::Invalid(_)));
}
