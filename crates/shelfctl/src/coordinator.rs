//! shelfctl's conversation with the coordinator: connecting with the admin
//! certificate and the typed requests the commands make.
//!
//! Every function here turns one request into the reply the caller wants, so
//! the commands never match on [`Response`] themselves. A refusal comes back
//! as `ProtoError::Refused` (with its wire code) except where a refusal is an
//! expected answer: [`read`] maps `not_found` to `Ok(None)`. Failures to reach
//! the coordinator at all carry the address in their context, since they are
//! configuration problems more often than not.

use std::net::SocketAddr;

use anyhow::Context;
use shelfsync_core::{Item, ItemKey, Op};
use shelfsync_proto::{
    Change, Client, ErrorCode, HistoryRequest, ProtoError, ReadRequest, Request, Response,
    StatusReply, WriteAck, WriteRequest,
};

use crate::config::Config;

/// Resolves the coordinator's address and connects to the first address that
/// answers, presenting the admin certificate.
pub async fn connect(config: &Config) -> anyhow::Result<Client> {
    let client_config = shelfsync_proto::tls::client_config(&config.tls)
        .context("cannot load the TLS files of the config")?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&config.coordinator)
        .await
        .with_context(|| format!("cannot resolve coordinator address {}", config.coordinator))?
        .collect();
    let mut last_error = None;
    for addr in addrs {
        match Client::connect(
            addr,
            &config.server_name,
            client_config.clone(),
            config.timeout,
        )
        .await
        {
            Ok(client) => return Ok(client),
            Err(err) => last_error = Some((addr, err)),
        }
    }
    match last_error {
        Some((addr, err)) => Err(anyhow::Error::new(err).context(format!(
            "cannot connect to the coordinator at {} ({addr}, server name {})",
            config.coordinator, config.server_name
        ))),
        None => anyhow::bail!(
            "coordinator address {} resolves to no address",
            config.coordinator
        ),
    }
}

/// The sync status of every registered store.
pub async fn status(client: &Client) -> Result<StatusReply, ProtoError> {
    match client.request(&Request::Status).await? {
        Response::Status(reply) => Ok(reply),
        _ => Err(ProtoError::Unexpected("expected a status reply")),
    }
}

/// A strong read: the item as the coordinator holds it durably, or `None`
/// when there is no live item under `key`.
pub async fn read(client: &Client, key: &ItemKey) -> Result<Option<Item>, ProtoError> {
    let request = Request::Read(ReadRequest { key: key.clone() });
    match client.call(&request).await? {
        Response::Read(reply) => Ok(Some(reply.item)),
        Response::Error(err) if err.code == ErrorCode::NotFound => Ok(None),
        Response::Error(err) => Err(ProtoError::Refused(err)),
        _ => Err(ProtoError::Unexpected("expected a read reply")),
    }
}

/// The retained change log of one key, newest first, at most `limit` entries.
pub async fn history(
    client: &Client,
    key: &ItemKey,
    limit: u32,
) -> Result<Vec<Change>, ProtoError> {
    let request = Request::History(HistoryRequest {
        key: key.clone(),
        limit,
    });
    match client.request(&request).await? {
        Response::History(reply) => Ok(reply.changes),
        _ => Err(ProtoError::Unexpected("expected a history reply")),
    }
}

/// One write; a refusal is `Err(ProtoError::Refused)`.
pub async fn write(
    client: &Client,
    idempotency_key: String,
    key: &ItemKey,
    op: Op,
    expected_version: Option<u64>,
) -> Result<WriteAck, ProtoError> {
    let request = Request::Write(WriteRequest {
        idempotency_key,
        key: key.clone(),
        op,
        expected_version,
        lock_token: None,
    });
    match client.request(&request).await? {
        Response::Write(ack) => Ok(ack),
        _ => Err(ProtoError::Unexpected("expected a write acknowledgement")),
    }
}
