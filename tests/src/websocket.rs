//! A WebSocket client for tests of upgrades through the mesh: it talks to a sidecar's
//! outbound port as an application would (`ws://`, plain HTTP/1.1 upgrade), and to the
//! demo app's `/ws` echo, which answers each text message with `<instance>: <text>`.

use futures::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// An open WebSocket.
pub type WebSocket = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `path` on 127.0.0.1:`port`.
pub async fn open(port: u16, path: &str) -> anyhow::Result<WebSocket> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let (ws, _) =
        tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}{path}"), tcp).await?;
    Ok(ws)
}

/// Sends `text` and returns the text answer.
pub async fn echo(ws: &mut WebSocket, text: &str) -> anyhow::Result<String> {
    ws.send(Message::text(text)).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => anyhow::bail!("answered {other:?}"),
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the WebSocket closed"),
        }
    }
}

/// Sends `bytes` as one binary message and returns the binary answer.
pub async fn echo_binary(ws: &mut WebSocket, bytes: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    ws.send(Message::binary(bytes)).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(b.to_vec()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => anyhow::bail!("answered {other:?}"),
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the WebSocket closed"),
        }
    }
}
