//! Outbound delivery (types; the engine lands from the delivery work).

/// One delivery attempt of one message to some of its recipients.
pub struct DeliveryJob<'a> {
    pub id: &'a str,
    /// Empty: the null sender.
    pub mail_from: &'a str,
    pub recipients: &'a [String],
    /// The whole message, CRLF line endings, not dot-stuffed.
    pub data: &'a [u8],
    pub from_outside_org: bool,
}

#[derive(Debug, Clone)]
pub struct RecipientOutcome {
    pub recipient: String,
    pub status: DeliveryStatus,
    pub connector: Option<String>,
    pub remote_host: Option<String>,
    pub would_route: Option<String>,
}

#[derive(Debug, Clone)]
pub enum DeliveryStatus {
    Delivered { reply: String },
    Temporary(Failure),
    Permanent(Failure),
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub code: Option<u16>,
    pub enhanced: String,
    pub text: String,
}
