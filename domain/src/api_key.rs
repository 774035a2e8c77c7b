//! API keys for machine clients. The secret is never stored: only its SHA-256 and a short
//! prefix used to find the key.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::product::text;
use crate::{Role, RuleCode, RuleKind};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub state: Option<ApiKeyState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyState {
    pub factory_id: Uuid,
    pub name: String,
    pub role: Role,
    pub prefix: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApiKeyCommand {
    IssueApiKey {
        factory_id: Uuid,
        name: String,
        role: Role,
        prefix: String,
        secret_sha256: String,
    },
    RevokeApiKey,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApiKeyEvent {
    ApiKeyIssued {
        factory_id: Uuid,
        name: String,
        role: Role,
        prefix: String,
        /// Hex SHA-256 of the whole key; the key itself is shown once and never kept.
        secret_sha256: String,
    },
    ApiKeyRevoked,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("the API key already exists")]
    AlreadyExists,
    #[error("the API key does not exist")]
    NotFound,
    #[error("the API key is already revoked")]
    AlreadyRevoked,
    #[error("`name` must have 1 to 100 characters")]
    InvalidName,
    #[error("an API key cannot carry the admin role")]
    AdminKey,
}

impl RuleCode for ApiKeyError {
    fn code(&self) -> &'static str {
        match self {
            ApiKeyError::AlreadyExists => "api_key.already_exists",
            ApiKeyError::NotFound => "api_key.not_found",
            ApiKeyError::AlreadyRevoked => "api_key.already_revoked",
            ApiKeyError::InvalidName => "api_key.invalid_name",
            ApiKeyError::AdminKey => "api_key.admin_role",
        }
    }

    fn kind(&self) -> RuleKind {
        match self {
            ApiKeyError::AlreadyExists => RuleKind::State,
            ApiKeyError::NotFound => RuleKind::Missing,
            ApiKeyError::AlreadyRevoked => RuleKind::State,
            ApiKeyError::InvalidName => RuleKind::Invalid,
            ApiKeyError::AdminKey => RuleKind::Invalid,
        }
    }
}

impl DomainEvent for ApiKeyEvent {
    fn event_type(&self) -> String {
        match self {
            ApiKeyEvent::ApiKeyIssued { .. } => "ApiKeyIssued",
            ApiKeyEvent::ApiKeyRevoked => "ApiKeyRevoked",
        }
        .into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

impl Aggregate for ApiKey {
    const TYPE: &'static str = "ApiKey";
    type Command = ApiKeyCommand;
    type Event = ApiKeyEvent;
    type Error = ApiKeyError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ApiKeyCommand::IssueApiKey {
                factory_id,
                name,
                role,
                prefix,
                secret_sha256,
            } => {
                if self.state.is_some() {
                    return Err(ApiKeyError::AlreadyExists);
                }
                // Keys belong to one factory; the cross-factory admin role is for people.
                if role == Role::Admin {
                    return Err(ApiKeyError::AdminKey);
                }
                let name = text(name, "name", 1, 100).map_err(|_| ApiKeyError::InvalidName)?;
                let event = ApiKeyEvent::ApiKeyIssued {
                    factory_id,
                    name,
                    role,
                    prefix,
                    secret_sha256,
                };
                sink.write(event, self).await;
            }
            ApiKeyCommand::RevokeApiKey => {
                let s = self.state.as_ref().ok_or(ApiKeyError::NotFound)?;
                if s.revoked {
                    return Err(ApiKeyError::AlreadyRevoked);
                }
                sink.write(ApiKeyEvent::ApiKeyRevoked, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ApiKeyEvent::ApiKeyIssued {
                factory_id,
                name,
                role,
                prefix,
                ..
            } => {
                self.state = Some(ApiKeyState {
                    factory_id,
                    name,
                    role,
                    prefix,
                    revoked: false,
                })
            }
            ApiKeyEvent::ApiKeyRevoked => {
                if let Some(s) = self.state.as_mut() {
                    s.revoked = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Test = TestFramework<ApiKey>;

    fn issue(role: Role) -> ApiKeyCommand {
        ApiKeyCommand::IssueApiKey {
            factory_id: Uuid::nil(),
            name: "line 3 scanner".into(),
            role,
            prefix: "vk_abcd1234".into(),
            secret_sha256: "00".repeat(32),
        }
    }

    fn issued() -> ApiKeyEvent {
        ApiKeyEvent::ApiKeyIssued {
            factory_id: Uuid::nil(),
            name: "line 3 scanner".into(),
            role: Role::FactoryUser,
            prefix: "vk_abcd1234".into(),
            secret_sha256: "00".repeat(32),
        }
    }

    #[tokio::test]
    async fn issues_and_revokes_once() {
        Test::with(())
            .given_no_previous_events()
            .when_async(issue(Role::FactoryUser))
            .await
            .then_expect_events(vec![issued()]);
        Test::with(())
            .given(vec![issued()])
            .when_async(ApiKeyCommand::RevokeApiKey)
            .await
            .then_expect_events(vec![ApiKeyEvent::ApiKeyRevoked]);
        Test::with(())
            .given(vec![issued(), ApiKeyEvent::ApiKeyRevoked])
            .when_async(ApiKeyCommand::RevokeApiKey)
            .await
            .then_expect_error(ApiKeyError::AlreadyRevoked);
    }

    #[tokio::test]
    async fn refuses_admin_keys() {
        Test::with(())
            .given_no_previous_events()
            .when_async(issue(Role::Admin))
            .await
            .then_expect_error(ApiKeyError::AdminKey);
    }
}
