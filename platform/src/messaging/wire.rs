//! One Kafka request and its answer over a plain TCP connection, for the few things librdkafka does
//! not do for us (the readiness probe, a consumer group's members, removing a static member). The
//! message formats come from `kafka-protocol`; this is only the framing: a 4-byte length, the request
//! header, the body; the answer likewise.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request this client sends, and the answer it expects. (kafka-protocol's own `Request` trait
/// exists only when its broker side is compiled in too.)
pub trait Call: Encodable + HeaderVersion {
    const KEY: ApiKey;
    type Answer: Decodable + HeaderVersion;
}

macro_rules! calls {
    ($($request:ident => $answer:ident as $key:ident),* $(,)?) => {
        $(impl Call for $request {
            const KEY: ApiKey = ApiKey::$key;
            type Answer = $answer;
        })*
    };
}

calls! {
    ApiVersionsRequest => ApiVersionsResponse as ApiVersions,
    FindCoordinatorRequest => FindCoordinatorResponse as FindCoordinator,
    DescribeGroupsRequest => DescribeGroupsResponse as DescribeGroups,
    LeaveGroupRequest => LeaveGroupResponse as LeaveGroup,
    MetadataRequest => MetadataResponse as Metadata,
    OffsetFetchRequest => OffsetFetchResponse as OffsetFetch,
    ListOffsetsRequest => ListOffsetsResponse as ListOffsets,
    FetchRequest => FetchResponse as Fetch,
}

/// The largest frame read, a request or an answer: above the agreements' largest message size with
/// room for batching, below what would let one connection hold the platform's memory.
const MAX_FRAME: usize = 64 << 20;

/// One length-prefixed frame (without its length); None at a clean end of the stream.
pub async fn read_frame(from: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Option<Bytes>> {
    let len = match from.read_i32().await {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len < 0 || len as usize > MAX_FRAME {
        return Err(bad(format!("a {len}-byte frame (at most {MAX_FRAME}); not the Kafka protocol?")));
    }
    let mut buf = vec![0u8; len as usize];
    from.read_exact(&mut buf).await?;
    Ok(Some(Bytes::from(buf)))
}

/// `frame` with its length before it.
pub async fn write_frame(to: &mut (impl AsyncWriteExt + Unpin), frame: &[u8]) -> std::io::Result<()> {
    to.write_all(&(frame.len() as i32).to_be_bytes()).await?;
    to.write_all(frame).await
}

pub struct Connection {
    stream: TcpStream,
    broker: String,
    client_id: &'static str,
    correlation: i32,
    timeout: Duration,
}

fn bad(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

impl Connection {
    pub async fn connect(broker: &str, client_id: &'static str, timeout: Duration) -> std::io::Result<Self> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(broker))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {broker}")))??;
        stream.set_nodelay(true)?;
        Ok(Connection { stream, broker: broker.to_owned(), client_id, correlation: 0, timeout })
    }

    /// Sends `request` as `version` and returns the broker's answer.
    pub async fn call<R: Call>(&mut self, request: &R, version: i16) -> std::io::Result<R::Answer> {
        let name = format!("{:?}", R::KEY);
        match tokio::time::timeout(self.timeout, self.round_trip(request, version)).await {
            Ok(r) => r.map_err(|e| std::io::Error::new(e.kind(), format!("{name} v{version} to {}: {e}", self.broker))),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{name} v{version} to {}: no answer within {}ms", self.broker, self.timeout.as_millis()),
            )),
        }
    }

    async fn round_trip<R: Call>(&mut self, request: &R, version: i16) -> std::io::Result<R::Answer> {
        self.correlation = self.correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from(self.client_id)));
        let mut frame = BytesMut::with_capacity(128);
        frame.extend_from_slice(&[0; 4]);
        let encode = |e: anyhow::Error| bad(format!("encoding: {e}"));
        header.encode(&mut frame, R::header_version(version)).map_err(encode)?;
        request.encode(&mut frame, version).map_err(encode)?;
        let len = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&frame).await?;

        let mut answer = read_frame(&mut self.stream).await?.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the broker closed the connection")
        })?;
        let decode = |e: anyhow::Error| bad(format!("decoding the answer: {e}"));
        let header = ResponseHeader::decode(&mut answer, R::Answer::header_version(version)).map_err(decode)?;
        if header.correlation_id != self.correlation {
            return Err(bad(format!("answered another request (correlation id {})", header.correlation_id)));
        }
        R::Answer::decode(&mut answer, version).map_err(decode)
    }
}
