//! Publisher confirms without blocking: a publish routed at once whose
//! future resolves when the message is durable.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::durable::Store;
use crate::error::PublishError;
use crate::message::Message;
use crate::sync::Arc;
use crate::vhost::publish::Routed;

/// A publish routed, resolving once the message is durable per the
/// broker's [`SyncPolicy`](crate::SyncPolicy): what
/// [`Connection::publish_confirmed`](super::Connection::publish_confirmed)
/// returns. A future for any executor (its waker is woken by the broker's
/// sync thread), or [`wait`](Self::wait) to block.
///
/// It resolves at once when there is nothing to wait for: no data
/// directory, no durable queue reached, a transient message, or the
/// `OsBuffered` policy. Dropping it does not undo the publish.
#[must_use = "a confirm does nothing unless awaited or waited on"]
#[derive(Debug)]
pub struct Confirm {
    state: State,
}

#[derive(Debug)]
enum State {
    Done(Option<Result<Routed, PublishError>>),
    Waiting { store: Arc<Store>, lsn: u64, routed: Routed, message: Option<Message> },
}

impl Confirm {
    pub(crate) fn done(outcome: Result<Routed, PublishError>) -> Confirm {
        Confirm { state: State::Done(Some(outcome)) }
    }

    pub(crate) fn waiting(store: Arc<Store>, lsn: u64, routed: Routed, message: Message) -> Confirm {
        Confirm { state: State::Waiting { store, lsn, routed, message: Some(message) } }
    }

    /// Blocks until the message is durable (or the store failed).
    ///
    /// # Errors
    ///
    /// What the publish failed with, or [`PublishError::StoreFailed`] if
    /// the sync failed (the message handed back).
    pub fn wait(self) -> Result<Routed, PublishError> {
        match self.state {
            State::Done(outcome) => outcome.unwrap_or_else(|| Err(spent())),
            State::Waiting { store, lsn, routed, message } => {
                store.syncer.wait(&store, lsn).map(|()| routed).map_err(|error| PublishError::StoreFailed {
                    queues: Vec::new(),
                    routed: routed.queues(),
                    error,
                    message: Box::new(message.unwrap_or_default()),
                })
            }
        }
    }
}

/// Polled again after it resolved: an error rather than a panic.
fn spent() -> PublishError {
    PublishError::ConnectionClosed { message: Box::default() }
}

impl Future for Confirm {
    type Output = Result<Routed, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            State::Done(outcome) => Poll::Ready(outcome.take().unwrap_or_else(|| Err(spent()))),
            State::Waiting { store, lsn, routed, message } => match store.syncer.poll(*lsn, cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(outcome) => {
                    let routed = *routed;
                    let message = message.take().unwrap_or_default();
                    this.state = State::Done(None);
                    Poll::Ready(outcome.map(|()| routed).map_err(|error| PublishError::StoreFailed {
                        queues: Vec::new(),
                        routed: routed.queues(),
                        error,
                        message: Box::new(message),
                    }))
                }
            },
        }
    }
}
