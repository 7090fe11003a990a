//! A request's engine events as a stream in which each token knows whether it is the last one
//! (TGI puts the whole text and the details on the last token's event), followed by nothing.

use futures_lite::Stream;
use idefics2::engine::{EngineEvent, Finished, GeneratedToken, RequestHandle};

pub enum Item {
    Token {
        index: usize,
        token: GeneratedToken,
        /// Set on the last token.
        finished: Option<Finished>,
    },
    Failed(String),
}

struct State {
    handle: RequestHandle,
    held: Option<GeneratedToken>,
    index: usize,
    done: bool,
}

/// The tokens of `handle`, one behind the engine so that the last can carry the end.
pub fn tokens(handle: RequestHandle) -> impl Stream<Item = Item> + Send + 'static {
    let state = State {
        handle,
        held: None,
        index: 0,
        done: false,
    };
    futures_lite::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        loop {
            let event = state.handle.events.recv().await;
            let item = match event {
                Ok(EngineEvent::Token(token)) => match state.held.replace(token) {
                    Some(previous) => Some(Item::Token {
                        index: state.index,
                        token: previous,
                        finished: None,
                    }),
                    None => None,
                },
                Ok(EngineEvent::Finished(finished)) => {
                    state.done = true;
                    crate::metrics::success(&finished);
                    match state.held.take() {
                        Some(token) => Some(Item::Token {
                            index: state.index,
                            token,
                            finished: Some(finished),
                        }),
                        None => Some(Item::Failed("the request ended without a token".into())),
                    }
                }
                Ok(EngineEvent::Failed(message)) => {
                    state.done = true;
                    crate::metrics::failure("generation");
                    Some(Item::Failed(message))
                }
                Err(_) => {
                    state.done = true;
                    Some(Item::Failed(
                        "the engine stopped before the request finished".into(),
                    ))
                }
            };
            if let Some(item) = item {
                if matches!(item, Item::Token { .. }) {
                    state.index += 1;
                }
                return Some((item, state));
            }
        }
    })
}
