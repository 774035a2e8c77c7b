//! Products: what a factory makes, identified by a GS1 GTIN.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Gtin, Market, RuleCode, RuleKind};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub state: Option<ProductState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductState {
    pub factory_id: Uuid,
    pub gtin: Gtin,
    pub name: String,
    pub brand: String,
    pub description: String,
    pub intended_markets: Vec<Market>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewProduct {
    pub factory_id: Uuid,
    pub gtin: Gtin,
    pub name: String,
    pub brand: String,
    pub description: String,
    pub intended_markets: Vec<Market>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProductCommand {
    RegisterProduct(NewProduct),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProductEvent {
    ProductRegistered {
        factory_id: Uuid,
        gtin: Gtin,
        name: String,
        brand: String,
        description: String,
        intended_markets: Vec<Market>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    #[error("the product is already registered")]
    AlreadyRegistered,
    #[error("`{field}` must have 1 to {max} characters")]
    TextLength { field: &'static str, max: usize },
    #[error("a product needs at least one intended market")]
    NoMarkets,
}

impl RuleCode for ProductError {
    fn code(&self) -> &'static str {
        match self {
            ProductError::AlreadyRegistered => "product.already_registered",
            ProductError::TextLength { .. } => "product.text_length",
            ProductError::NoMarkets => "product.no_markets",
        }
    }

    fn kind(&self) -> RuleKind {
        match self {
            ProductError::AlreadyRegistered => RuleKind::State,
            ProductError::TextLength { .. } => RuleKind::Invalid,
            ProductError::NoMarkets => RuleKind::Invalid,
        }
    }
}

impl DomainEvent for ProductEvent {
    fn event_type(&self) -> String {
        match self {
            ProductEvent::ProductRegistered { .. } => "ProductRegistered".into(),
        }
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

/// Trims `value` and checks it has between `min` and `max` characters.
pub(crate) fn text(
    value: String,
    field: &'static str,
    min: usize,
    max: usize,
) -> Result<String, (&'static str, usize)> {
    let value = value.trim().to_string();
    let n = value.chars().count();
    if n < min || n > max {
        return Err((field, max));
    }
    Ok(value)
}

impl Aggregate for Product {
    const TYPE: &'static str = "Product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ProductCommand::RegisterProduct(p) => {
                if self.state.is_some() {
                    return Err(ProductError::AlreadyRegistered);
                }
                let len = |(field, max)| ProductError::TextLength { field, max };
                let name = text(p.name, "name", 1, 200).map_err(len)?;
                let brand = text(p.brand, "brand", 1, 200).map_err(len)?;
                let description = text(p.description, "description", 0, 2000).map_err(len)?;
                if p.intended_markets.is_empty() {
                    return Err(ProductError::NoMarkets);
                }
                let event = ProductEvent::ProductRegistered {
                    factory_id: p.factory_id,
                    gtin: p.gtin,
                    name,
                    brand,
                    description,
                    intended_markets: p.intended_markets,
                };
                sink.write(event, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ProductEvent::ProductRegistered {
                factory_id,
                gtin,
                name,
                brand,
                description,
                intended_markets,
            } => {
                self.state = Some(ProductState {
                    factory_id,
                    gtin,
                    name,
                    brand,
                    description,
                    intended_markets,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Test = TestFramework<Product>;

    fn new_product() -> NewProduct {
        NewProduct {
            factory_id: Uuid::nil(),
            gtin: Gtin::parse("09506000134352").unwrap(),
            name: " Serum ".into(),
            brand: "Acme".into(),
            description: String::new(),
            intended_markets: vec![Market::parse("BR").unwrap()],
        }
    }

    fn registered() -> ProductEvent {
        ProductEvent::ProductRegistered {
            factory_id: Uuid::nil(),
            gtin: Gtin::parse("09506000134352").unwrap(),
            name: "Serum".into(),
            brand: "Acme".into(),
            description: String::new(),
            intended_markets: vec![Market::parse("BR").unwrap()],
        }
    }

    #[tokio::test]
    async fn registers_a_product_with_trimmed_text() {
        Test::with(())
            .given_no_previous_events()
            .when_async(ProductCommand::RegisterProduct(new_product()))
            .await
            .then_expect_events(vec![registered()]);
    }

    #[tokio::test]
    async fn refuses_a_second_registration() {
        Test::with(())
            .given(vec![registered()])
            .when_async(ProductCommand::RegisterProduct(new_product()))
            .await
            .then_expect_error(ProductError::AlreadyRegistered);
    }

    #[tokio::test]
    async fn names_the_field_that_is_empty() {
        let mut p = new_product();
        p.brand = "  ".into();
        Test::with(())
            .given_no_previous_events()
            .when_async(ProductCommand::RegisterProduct(p))
            .await
            .then_expect_error(ProductError::TextLength {
                field: "brand",
                max: 200,
            });
    }

    #[tokio::test]
    async fn needs_a_market() {
        let mut p = new_product();
        p.intended_markets.clear();
        Test::with(())
            .given_no_previous_events()
            .when_async(ProductCommand::RegisterProduct(p))
            .await
            .then_expect_error(ProductError::NoMarkets);
    }
}
