//! The handshake: greeting, then option haggling until an export is chosen, the client
//! leaves, or TLS starts.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::{read_exact_or_eof, Export, Haggled, ProtocolError, Server};
use crate::device::{Peer, Refusal};
use crate::proto;

impl Server {
    /// Greeting and client flags. `None`: the client went away.
    pub(super) async fn greet<S>(&self, s: &mut S) -> Result<Option<proto::ClientFlags>, ProtocolError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        s.write_all(&proto::server_greeting()).await?;
        s.flush().await?;
        let mut flags = [0u8; 4];
        if !read_exact_or_eof(s, &mut flags).await? {
            return Ok(None);
        }
        Ok(Some(proto::parse_client_flags(&flags)?))
    }

    /// Option haggling, until an export is chosen, the client leaves, or TLS starts
    /// (the caller wraps the stream and haggles again on it).
    pub(super) async fn haggle<S>(
        &self,
        s: &mut S,
        who: &Peer,
        client: proto::ClientFlags,
    ) -> Result<Haggled, ProtocolError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            let Some((option, data)) = read_option(s).await? else {
                return Ok(Haggled::Left);
            };
            if let Some(done) = self.answer_option(s, who, client, option, &data).await? {
                return Ok(done);
            }
        }
    }

    /// Replies to one option. `Some`: haggling is over.
    async fn answer_option<S>(
        &self,
        s: &mut S,
        who: &Peer,
        client: proto::ClientFlags,
        option: u32,
        data: &[u8],
    ) -> Result<Option<Haggled>, ProtocolError>
    where
        S: AsyncWrite + Unpin,
    {
        if self.tls_missing(who) && !matches!(option, proto::OPT_STARTTLS | proto::OPT_ABORT) {
            if option == proto::OPT_EXPORT_NAME {
                // No error reply exists for EXPORT_NAME; the spec says to close.
                let refusal = Refusal::TlsRequired("peer is not local".into());
                return Err(ProtocolError::UnknownExport(proto::parse_export_name(data)?, refusal));
            }
            send_option_reply(s, option, proto::REP_ERR_TLS_REQD, b"TLS is required: use NBD_OPT_STARTTLS").await?;
            return Ok(None);
        }
        match option {
            proto::OPT_EXPORT_NAME => self.opt_export_name(s, who, client, data).await.map(Some),
            proto::OPT_ABORT => {
                // The client may already have closed; the ACK is a courtesy.
                let _ = send_option_reply(s, option, proto::REP_ACK, &[]).await;
                Ok(Some(Haggled::Left))
            }
            proto::OPT_LIST => self.opt_list(s, who, data).await.map(|()| None),
            proto::OPT_INFO | proto::OPT_GO => self.opt_info_or_go(s, who, option, data).await,
            proto::OPT_STARTTLS => self.opt_starttls(s, who, data).await,
            proto::OPT_STRUCTURED_REPLY => {
                // Simple replies only; clients fall back per the spec.
                send_option_reply(s, option, proto::REP_ERR_UNSUP, b"structured replies not supported").await?;
                Ok(None)
            }
            other => {
                debug!(peer = %who.addr, option = other, "unsupported NBD option");
                send_option_reply(s, other, proto::REP_ERR_UNSUP, b"unsupported option").await?;
                Ok(None)
            }
        }
    }

    /// NBD_OPT_EXPORT_NAME: the export, or the connection closes.
    async fn opt_export_name<S>(
        &self,
        s: &mut S,
        who: &Peer,
        client: proto::ClientFlags,
        data: &[u8],
    ) -> Result<Haggled, ProtocolError>
    where
        S: AsyncWrite + Unpin,
    {
        let name = proto::parse_export_name(data)?;
        let (name, device) = match self.resolve(&name, who) {
            Ok(x) => x,
            Err(refusal) => return Err(ProtocolError::UnknownExport(name, refusal)),
        };
        let export = self.export(name, device);
        s.write_all(&proto::export_name_reply(export.size, export.flags, client.no_zeroes)).await?;
        s.flush().await?;
        Ok(Haggled::Export(export))
    }

    /// NBD_OPT_LIST: the exports this peer may open.
    async fn opt_list<S>(&self, s: &mut S, who: &Peer, data: &[u8]) -> Result<(), ProtocolError>
    where
        S: AsyncWrite + Unpin,
    {
        let option = proto::OPT_LIST;
        if !data.is_empty() {
            send_option_reply(s, option, proto::REP_ERR_INVALID, b"LIST takes no data").await?;
            return Ok(());
        }
        let mut out = Vec::new();
        for name in self.provider.list_for(who) {
            out.extend(proto::option_reply(option, proto::REP_SERVER, &proto::rep_server_data(&name)));
        }
        out.extend(proto::option_reply(option, proto::REP_ACK, &[]));
        s.write_all(&out).await?;
        s.flush().await?;
        Ok(())
    }

    /// NBD_OPT_INFO and NBD_OPT_GO: the export's details; GO also ends haggling.
    async fn opt_info_or_go<S>(
        &self,
        s: &mut S,
        who: &Peer,
        option: u32,
        data: &[u8],
    ) -> Result<Option<Haggled>, ProtocolError>
    where
        S: AsyncWrite + Unpin,
    {
        let req = match proto::parse_info_request(data) {
            Ok(r) => r,
            Err(e) => {
                warn!(peer = %who.addr, option, error = %e, "malformed NBD_OPT_INFO/GO");
                send_option_reply(s, option, proto::REP_ERR_INVALID, e.to_string().as_bytes()).await?;
                return Ok(None);
            }
        };
        let (name, device) = match self.resolve(&req.name, who) {
            Ok(x) => x,
            Err(refusal) => {
                let code = match refusal {
                    Refusal::Unknown => proto::REP_ERR_UNKNOWN,
                    Refusal::TlsRequired(_) => proto::REP_ERR_TLS_REQD,
                    Refusal::Denied(_) => proto::REP_ERR_POLICY,
                };
                info!(peer = %who.addr, tls = who.tls, export = %req.name, reason = %refusal, "export refused");
                let msg = format!("export {:?}: {refusal}", req.name);
                send_option_reply(s, option, code, msg.as_bytes()).await?;
                return Ok(None);
            }
        };
        let export = self.export(name, device);
        s.write_all(&self.info_replies(option, &export, &req.infos)).await?;
        s.flush().await?;
        Ok((option == proto::OPT_GO).then_some(Haggled::Export(export)))
    }

    /// NBD_OPT_STARTTLS: accepted once, when TLS is configured and not yet started.
    async fn opt_starttls<S>(&self, s: &mut S, who: &Peer, data: &[u8]) -> Result<Option<Haggled>, ProtocolError>
    where
        S: AsyncWrite + Unpin,
    {
        let option = proto::OPT_STARTTLS;
        let refusal: Option<(u32, &[u8])> = if self.config.tls.is_none() {
            Some((proto::REP_ERR_UNSUP, b"TLS not configured"))
        } else if who.tls {
            Some((proto::REP_ERR_INVALID, b"TLS already started"))
        } else if !data.is_empty() {
            Some((proto::REP_ERR_INVALID, b"STARTTLS takes no data"))
        } else {
            None
        };
        if let Some((code, msg)) = refusal {
            send_option_reply(s, option, code, msg).await?;
            return Ok(None);
        }
        send_option_reply(s, option, proto::REP_ACK, &[]).await?;
        Ok(Some(Haggled::StartTls))
    }

    /// NBD_REP_INFO replies for INFO/GO, then the ACK.
    fn info_replies(&self, option: u32, export: &Export, requested: &[u16]) -> Vec<u8> {
        let mut out = proto::option_reply(option, proto::REP_INFO, &proto::info_export(export.size, export.flags));
        let (min, pref, max) = proto::block_sizes(export.device.preferred_block_size(), self.config.max_request);
        out.extend(proto::option_reply(option, proto::REP_INFO, &proto::info_block_size(min, pref, max)));
        if requested.contains(&proto::INFO_NAME) && export.name.len() <= proto::MAX_STRING_LEN {
            out.extend(proto::option_reply(
                option,
                proto::REP_INFO,
                &proto::info_string(proto::INFO_NAME, &export.name),
            ));
        }
        if requested.contains(&proto::INFO_DESCRIPTION) {
            if let Some(desc) = export.device.description() {
                let mut end = desc.len().min(proto::MAX_STRING_LEN);
                while !desc.is_char_boundary(end) {
                    end -= 1;
                }
                let data = proto::info_string(proto::INFO_DESCRIPTION, &desc[..end]);
                out.extend(proto::option_reply(option, proto::REP_INFO, &data));
            }
        }
        out.extend(proto::option_reply(option, proto::REP_ACK, &[]));
        out
    }
}

/// One option header and its data. `None`: the client left.
async fn read_option<S>(s: &mut S) -> Result<Option<(u32, Vec<u8>)>, ProtocolError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hdr = [0u8; proto::OPTION_HEADER_LEN];
    if !read_exact_or_eof(s, &mut hdr).await? {
        return Ok(None);
    }
    let opt = proto::parse_option_header(&hdr)?;
    if opt.len > proto::MAX_OPTION_LEN {
        // We won't read the payload, so the stream is lost after this reply.
        let _ = send_option_reply(s, opt.option, proto::REP_ERR_TOO_BIG, b"option too large").await;
        return Err(ProtocolError::OptionTooBig { option: opt.option, len: opt.len });
    }
    let mut data = vec![0u8; opt.len as usize];
    s.read_exact(&mut data).await?;
    Ok(Some((opt.option, data)))
}

async fn send_option_reply<S>(s: &mut S, option: u32, reply_type: u32, data: &[u8]) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    s.write_all(&proto::option_reply(option, reply_type, data)).await?;
    s.flush().await
}
