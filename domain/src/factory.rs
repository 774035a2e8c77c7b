//! The factory: the tenant that owns products, batches, tags and API keys.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{RuleCode, RuleKind};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Factory {
    pub state: Option<FactoryState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactoryState {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FactoryCommand {
    RegisterFactory { name: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FactoryEvent {
    FactoryRegistered { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactoryError {
    #[error("the factory is already registered")]
    AlreadyRegistered,
    #[error("a factory needs a name of 1 to 200 characters")]
    InvalidName,
}

impl RuleCode for FactoryError {
    fn code(&self) -> &'static str {
        match self {
            FactoryError::AlreadyRegistered => "factory.already_registered",
            FactoryError::InvalidName => "factory.invalid_name",
        }
    }

    fn kind(&self) -> RuleKind {
        match self {
            FactoryError::AlreadyRegistered => RuleKind::State,
            FactoryError::InvalidName => RuleKind::Invalid,
        }
    }
}

impl DomainEvent for FactoryEvent {
    fn event_type(&self) -> String {
        match self {
            FactoryEvent::FactoryRegistered { .. } => "FactoryRegistered".into(),
        }
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

impl Aggregate for Factory {
    const TYPE: &'static str = "Factory";
    type Command = FactoryCommand;
    type Event = FactoryEvent;
    type Error = FactoryError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            FactoryCommand::RegisterFactory { name } => {
                if self.state.is_some() {
                    return Err(FactoryError::AlreadyRegistered);
                }
                let name = name.trim().to_string();
                if name.is_empty() || name.chars().count() > 200 {
                    return Err(FactoryError::InvalidName);
                }
                sink.write(FactoryEvent::FactoryRegistered { name }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            FactoryEvent::FactoryRegistered { name } => self.state = Some(FactoryState { name }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Test = TestFramework<Factory>;

    #[tokio::test]
    async fn registers_once_with_a_trimmed_name() {
        Test::with(())
            .given_no_previous_events()
            .when_async(FactoryCommand::RegisterFactory {
                name: "  Acme  ".into(),
            })
            .await
            .then_expect_events(vec![FactoryEvent::FactoryRegistered {
                name: "Acme".into(),
            }]);
        Test::with(())
            .given(vec![FactoryEvent::FactoryRegistered {
                name: "Acme".into(),
            }])
            .when_async(FactoryCommand::RegisterFactory {
                name: "Acme".into(),
            })
            .await
            .then_expect_error(FactoryError::AlreadyRegistered);
    }

    #[tokio::test]
    async fn refuses_an_empty_name() {
        Test::with(())
            .given_no_previous_events()
            .when_async(FactoryCommand::RegisterFactory { name: "   ".into() })
            .await
            .then_expect_error(FactoryError::InvalidName);
    }
}
