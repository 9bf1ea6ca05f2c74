//! The gate every publish passes before it is routed: how the publish
//! path sees access control — one method, so that a virtual host never
//! knows who is asking.

use super::AccessRefused;
use crate::error::PublishError;
use crate::exchange::Exchange;
use crate::message::Message;

/// What a publish must pass before it is routed: the connection's access
/// control, seen from here through this one method so that a virtual host
/// never knows who is asking (see [`crate::access`]).
pub(crate) trait PublishGate {
    /// Admits `message` to exchange `name` (`exchange`: the exchange, or
    /// `None` if there is none of that name), or says why not.
    fn admit(
        &self,
        name: &str,
        exchange: Option<&Exchange>,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), GateRefusal>;
}

/// Why a [`PublishGate`] refused a message.
#[derive(Debug)]
pub(crate) enum GateRefusal {
    /// A permission is missing.
    NotPermitted(AccessRefused),
    /// `user_id` names another user.
    UserIdMismatch { claimed: String, user: String },
}

impl GateRefusal {
    /// The publish error, handing `message` back.
    #[cold]
    pub(crate) fn into_error(self, message: Message) -> PublishError {
        let message = Box::new(message);
        match self {
            GateRefusal::NotPermitted(refused) => PublishError::NotPermitted { refused, message },
            GateRefusal::UserIdMismatch { claimed, user } => {
                PublishError::UserIdMismatch { claimed, user, message }
            }
        }
    }
}
