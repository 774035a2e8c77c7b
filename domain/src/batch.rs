//! Production batches and the tags issued for them. A batch moves draft → active →
//! recalled or closed; tags are issued in chunks of at most [`MAX_TAGS_PER_EVENT`].

use chrono::NaiveDate;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use uuid::Uuid;

use crate::product::text;
use crate::{MAX_TAGS_PER_EVENT, Market, RuleCode, RuleKind};

mod tag_list;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Draft,
    Active,
    Recalled,
    Closed,
}

impl BatchStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Draft => "draft",
            BatchStatus::Active => "active",
            BatchStatus::Recalled => "recalled",
            BatchStatus::Closed => "closed",
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub state: Option<BatchState>,
}

/// What the batch must know to decide; the tag ids themselves live in the events and in
/// the write side's tag registry, never in this state (a batch may hold millions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchState {
    pub factory_id: Uuid,
    pub product_id: Uuid,
    pub lot: String,
    pub production_date: NaiveDate,
    pub sell_by: Option<NaiveDate>,
    pub intended_markets: Vec<Market>,
    pub status: BatchStatus,
    pub tag_count: u64,
    pub revoked_tags: BTreeSet<Uuid>,
    pub recall_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IssuedTag {
    pub tag_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewBatch {
    pub factory_id: Uuid,
    pub product_id: Uuid,
    /// The product's intended markets: a batch may narrow them, never widen them.
    pub product_markets: Vec<Market>,
    pub lot: String,
    pub production_date: NaiveDate,
    pub sell_by: Option<NaiveDate>,
    /// Empty means the product's markets.
    pub intended_markets: Vec<Market>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BatchCommand {
    CreateBatch(NewBatch),
    ActivateBatch,
    RecallBatch {
        reason: String,
    },
    CloseBatch,
    /// Tags for this batch; the caller has checked that none exists elsewhere.
    IssueTags {
        import_id: Option<Uuid>,
        tags: Vec<IssuedTag>,
    },
    /// Revokes one tag; the caller has checked that the tag belongs to this batch.
    RevokeTag {
        tag_id: Uuid,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BatchEvent {
    BatchCreated {
        factory_id: Uuid,
        product_id: Uuid,
        lot: String,
        production_date: NaiveDate,
        sell_by: Option<NaiveDate>,
        intended_markets: Vec<Market>,
    },
    BatchActivated,
    BatchRecalled {
        reason: String,
    },
    BatchClosed,
    TagsIssued {
        import_id: Option<Uuid>,
        /// Stored packed in columns since event version 2 (see [`tag_list`]).
        #[serde(with = "tag_list")]
        tags: Vec<IssuedTag>,
    },
    TagRevoked {
        tag_id: Uuid,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("the batch already exists")]
    AlreadyExists,
    #[error("the batch does not exist")]
    NotFound,
    #[error("`{field}` must have 1 to {max} characters")]
    TextLength { field: &'static str, max: usize },
    #[error("the sell-by date {sell_by} is before the production date {production_date}")]
    SellByBeforeProduction {
        production_date: NaiveDate,
        sell_by: NaiveDate,
    },
    #[error("market {0} is not among the product's intended markets")]
    MarketOutsideProduct(Market),
    #[error("only a draft batch can be activated; this one is {0}")]
    ActivateRequiresDraft(&'static str),
    #[error("only an active batch can be closed; this one is {0}")]
    CloseRequiresActive(&'static str),
    #[error("the batch is already recalled")]
    AlreadyRecalled,
    #[error("tags cannot be issued into a {0} batch")]
    IssueIntoFinishedBatch(&'static str),
    #[error("no tags to issue")]
    NoTags,
    #[error("tag {0} is already revoked")]
    TagAlreadyRevoked(Uuid),
}

impl RuleCode for BatchError {
    fn code(&self) -> &'static str {
        match self {
            BatchError::AlreadyExists => "batch.already_exists",
            BatchError::NotFound => "batch.not_found",
            BatchError::TextLength { .. } => "batch.text_length",
            BatchError::SellByBeforeProduction { .. } => "batch.sell_by_before_production",
            BatchError::MarketOutsideProduct(_) => "batch.market_outside_product",
            BatchError::ActivateRequiresDraft(_) => "batch.activate_requires_draft",
            BatchError::CloseRequiresActive(_) => "batch.close_requires_active",
            BatchError::AlreadyRecalled => "batch.already_recalled",
            BatchError::IssueIntoFinishedBatch(_) => "batch.issue_into_finished_batch",
            BatchError::NoTags => "batch.no_tags",
            BatchError::TagAlreadyRevoked(_) => "tag.already_revoked",
        }
    }

    fn kind(&self) -> RuleKind {
        match self {
            BatchError::AlreadyExists => RuleKind::State,
            BatchError::NotFound => RuleKind::Missing,
            BatchError::TextLength { .. } => RuleKind::Invalid,
            BatchError::SellByBeforeProduction { .. } => RuleKind::Invalid,
            BatchError::MarketOutsideProduct(_) => RuleKind::Invalid,
            BatchError::ActivateRequiresDraft(_) => RuleKind::State,
            BatchError::CloseRequiresActive(_) => RuleKind::State,
            BatchError::AlreadyRecalled => RuleKind::State,
            BatchError::IssueIntoFinishedBatch(_) => RuleKind::State,
            BatchError::NoTags => RuleKind::Invalid,
            BatchError::TagAlreadyRevoked(_) => RuleKind::State,
        }
    }
}

impl DomainEvent for BatchEvent {
    fn event_type(&self) -> String {
        match self {
            BatchEvent::BatchCreated { .. } => "BatchCreated",
            BatchEvent::BatchActivated => "BatchActivated",
            BatchEvent::BatchRecalled { .. } => "BatchRecalled",
            BatchEvent::BatchClosed => "BatchClosed",
            BatchEvent::TagsIssued { .. } => "TagsIssued",
            BatchEvent::TagRevoked { .. } => "TagRevoked",
        }
        .into()
    }
    /// `TagsIssued` is at version 2 since its tags are packed (ADR 0013); readers take
    /// both versions.
    fn event_version(&self) -> String {
        match self {
            BatchEvent::TagsIssued { .. } => "2",
            _ => "1",
        }
        .into()
    }
}

impl Batch {
    fn existing(&self) -> Result<&BatchState, BatchError> {
        self.state.as_ref().ok_or(BatchError::NotFound)
    }
}

impl Aggregate for Batch {
    const TYPE: &'static str = "Batch";
    type Command = BatchCommand;
    type Event = BatchEvent;
    type Error = BatchError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            BatchCommand::CreateBatch(b) => {
                if self.state.is_some() {
                    return Err(BatchError::AlreadyExists);
                }
                let lot = text(b.lot, "lot", 1, 64)
                    .map_err(|(field, max)| BatchError::TextLength { field, max })?;
                if let Some(sell_by) = b.sell_by
                    && sell_by < b.production_date
                {
                    return Err(BatchError::SellByBeforeProduction {
                        production_date: b.production_date,
                        sell_by,
                    });
                }
                if let Some(m) = b
                    .intended_markets
                    .iter()
                    .find(|m| !b.product_markets.contains(m))
                {
                    return Err(BatchError::MarketOutsideProduct(*m));
                }
                let intended_markets = if b.intended_markets.is_empty() {
                    b.product_markets
                } else {
                    b.intended_markets
                };
                let event = BatchEvent::BatchCreated {
                    factory_id: b.factory_id,
                    product_id: b.product_id,
                    lot,
                    production_date: b.production_date,
                    sell_by: b.sell_by,
                    intended_markets,
                };
                sink.write(event, self).await;
            }
            BatchCommand::ActivateBatch => {
                let s = self.existing()?;
                if s.status != BatchStatus::Draft {
                    return Err(BatchError::ActivateRequiresDraft(s.status.as_str()));
                }
                sink.write(BatchEvent::BatchActivated, self).await;
            }
            BatchCommand::RecallBatch { reason } => {
                let s = self.existing()?;
                // A closed batch can still be recalled: its products are on the market.
                if s.status == BatchStatus::Recalled {
                    return Err(BatchError::AlreadyRecalled);
                }
                let reason = text(reason, "reason", 1, 500)
                    .map_err(|(field, max)| BatchError::TextLength { field, max })?;
                sink.write(BatchEvent::BatchRecalled { reason }, self).await;
            }
            BatchCommand::CloseBatch => {
                let s = self.existing()?;
                if s.status != BatchStatus::Active {
                    return Err(BatchError::CloseRequiresActive(s.status.as_str()));
                }
                sink.write(BatchEvent::BatchClosed, self).await;
            }
            BatchCommand::IssueTags { import_id, tags } => {
                let s = self.existing()?;
                if matches!(s.status, BatchStatus::Recalled | BatchStatus::Closed) {
                    return Err(BatchError::IssueIntoFinishedBatch(s.status.as_str()));
                }
                if tags.is_empty() {
                    return Err(BatchError::NoTags);
                }
                if tags.len() <= MAX_TAGS_PER_EVENT {
                    // The usual case (an import sends one event's worth): no copy.
                    sink.write(BatchEvent::TagsIssued { import_id, tags }, self)
                        .await;
                    return Ok(());
                }
                for chunk in tags.chunks(MAX_TAGS_PER_EVENT) {
                    let event = BatchEvent::TagsIssued {
                        import_id,
                        tags: chunk.to_vec(),
                    };
                    sink.write(event, self).await;
                }
            }
            BatchCommand::RevokeTag { tag_id, reason } => {
                let s = self.existing()?;
                if s.revoked_tags.contains(&tag_id) {
                    return Err(BatchError::TagAlreadyRevoked(tag_id));
                }
                let reason = text(reason, "reason", 1, 500)
                    .map_err(|(field, max)| BatchError::TextLength { field, max })?;
                sink.write(BatchEvent::TagRevoked { tag_id, reason }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        if let BatchEvent::BatchCreated {
            factory_id,
            product_id,
            lot,
            production_date,
            sell_by,
            intended_markets,
        } = event
        {
            self.state = Some(BatchState {
                factory_id,
                product_id,
                lot,
                production_date,
                sell_by,
                intended_markets,
                status: BatchStatus::Draft,
                tag_count: 0,
                revoked_tags: BTreeSet::new(),
                recall_reason: None,
            });
            return;
        }
        // Events other than creation only ever follow it; cqrs-es folds in stored order.
        let Some(s) = self.state.as_mut() else { return };
        match event {
            BatchEvent::BatchCreated { .. } => {}
            BatchEvent::BatchActivated => s.status = BatchStatus::Active,
            BatchEvent::BatchRecalled { reason } => {
                s.status = BatchStatus::Recalled;
                s.recall_reason = Some(reason);
            }
            BatchEvent::BatchClosed => s.status = BatchStatus::Closed,
            BatchEvent::TagsIssued { tags, .. } => s.tag_count += tags.len() as u64,
            BatchEvent::TagRevoked { tag_id, .. } => {
                s.revoked_tags.insert(tag_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Test = TestFramework<Batch>;

    fn br() -> Market {
        Market::parse("BR").unwrap()
    }
    fn us() -> Market {
        Market::parse("US").unwrap()
    }
    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 1, d).unwrap()
    }

    fn new_batch() -> NewBatch {
        NewBatch {
            factory_id: Uuid::nil(),
            product_id: Uuid::max(),
            product_markets: vec![br(), us()],
            lot: "L-1".into(),
            production_date: day(2),
            sell_by: Some(day(20)),
            intended_markets: vec![],
        }
    }

    fn created() -> BatchEvent {
        BatchEvent::BatchCreated {
            factory_id: Uuid::nil(),
            product_id: Uuid::max(),
            lot: "L-1".into(),
            production_date: day(2),
            sell_by: Some(day(20)),
            intended_markets: vec![br(), us()],
        }
    }

    fn tags(n: usize) -> Vec<IssuedTag> {
        (0..n)
            .map(|i| IssuedTag {
                tag_id: Uuid::from_u128(i as u128 + 1),
                serial: None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_new_batch_inherits_the_product_markets() {
        Test::with(())
            .given_no_previous_events()
            .when_async(BatchCommand::CreateBatch(new_batch()))
            .await
            .then_expect_events(vec![created()]);
    }

    #[tokio::test]
    async fn a_batch_cannot_widen_the_product_markets() {
        let mut b = new_batch();
        b.intended_markets = vec![Market::parse("DE").unwrap()];
        Test::with(())
            .given_no_previous_events()
            .when_async(BatchCommand::CreateBatch(b))
            .await
            .then_expect_error(BatchError::MarketOutsideProduct(
                Market::parse("DE").unwrap(),
            ));
    }

    #[tokio::test]
    async fn sell_by_cannot_precede_production() {
        let mut b = new_batch();
        b.sell_by = Some(day(1));
        Test::with(())
            .given_no_previous_events()
            .when_async(BatchCommand::CreateBatch(b))
            .await
            .then_expect_error(BatchError::SellByBeforeProduction {
                production_date: day(2),
                sell_by: day(1),
            });
    }

    #[tokio::test]
    async fn activation_only_from_draft() {
        Test::with(())
            .given(vec![created()])
            .when_async(BatchCommand::ActivateBatch)
            .await
            .then_expect_events(vec![BatchEvent::BatchActivated]);
        Test::with(())
            .given(vec![created(), BatchEvent::BatchActivated])
            .when_async(BatchCommand::ActivateBatch)
            .await
            .then_expect_error(BatchError::ActivateRequiresDraft("active"));
        Test::with(())
            .given_no_previous_events()
            .when_async(BatchCommand::ActivateBatch)
            .await
            .then_expect_error(BatchError::NotFound);
    }

    #[tokio::test]
    async fn closing_requires_an_active_batch() {
        Test::with(())
            .given(vec![created()])
            .when_async(BatchCommand::CloseBatch)
            .await
            .then_expect_error(BatchError::CloseRequiresActive("draft"));
        Test::with(())
            .given(vec![created(), BatchEvent::BatchActivated])
            .when_async(BatchCommand::CloseBatch)
            .await
            .then_expect_events(vec![BatchEvent::BatchClosed]);
    }

    #[tokio::test]
    async fn a_closed_batch_can_be_recalled_but_only_once() {
        let recalled = BatchEvent::BatchRecalled {
            reason: "contamination".into(),
        };
        Test::with(())
            .given(vec![
                created(),
                BatchEvent::BatchActivated,
                BatchEvent::BatchClosed,
            ])
            .when_async(BatchCommand::RecallBatch {
                reason: " contamination ".into(),
            })
            .await
            .then_expect_events(vec![recalled.clone()]);
        Test::with(())
            .given(vec![created(), recalled])
            .when_async(BatchCommand::RecallBatch {
                reason: "again".into(),
            })
            .await
            .then_expect_error(BatchError::AlreadyRecalled);
    }

    #[tokio::test]
    async fn importing_into_a_recalled_batch_is_refused() {
        Test::with(())
            .given(vec![
                created(),
                BatchEvent::BatchRecalled { reason: "x".into() },
            ])
            .when_async(BatchCommand::IssueTags {
                import_id: None,
                tags: tags(1),
            })
            .await
            .then_expect_error(BatchError::IssueIntoFinishedBatch("recalled"));
    }

    #[tokio::test]
    async fn tags_are_issued_in_chunks_of_at_most_ten_thousand() {
        let all = tags(25_001);
        let events = Test::with(())
            .given(vec![created()])
            .when_async(BatchCommand::IssueTags {
                import_id: None,
                tags: all.clone(),
            })
            .await
            .inspect_result()
            .unwrap();
        let sizes: Vec<usize> = events
            .iter()
            .map(|e| match e {
                BatchEvent::TagsIssued { tags, .. } => tags.len(),
                other => panic!("unexpected event {other:?}"),
            })
            .collect();
        assert_eq!(sizes, [10_000, 10_000, 5_001]);
        let flattened: Vec<IssuedTag> = events
            .into_iter()
            .flat_map(|e| match e {
                BatchEvent::TagsIssued { tags, .. } => tags,
                _ => vec![],
            })
            .collect();
        assert_eq!(flattened, all);
    }

    #[tokio::test]
    async fn a_tag_is_revoked_once() {
        let id = Uuid::from_u128(7);
        Test::with(())
            .given(vec![created()])
            .when_async(BatchCommand::RevokeTag {
                tag_id: id,
                reason: "stolen".into(),
            })
            .await
            .then_expect_events(vec![BatchEvent::TagRevoked {
                tag_id: id,
                reason: "stolen".into(),
            }]);
        Test::with(())
            .given(vec![
                created(),
                BatchEvent::TagRevoked {
                    tag_id: id,
                    reason: "stolen".into(),
                },
            ])
            .when_async(BatchCommand::RevokeTag {
                tag_id: id,
                reason: "again".into(),
            })
            .await
            .then_expect_error(BatchError::TagAlreadyRevoked(id));
    }

    #[test]
    fn the_fold_counts_tags_and_tracks_status() {
        let mut b = Batch::default();
        for e in [
            created(),
            BatchEvent::TagsIssued {
                import_id: None,
                tags: tags(3),
            },
            BatchEvent::BatchActivated,
        ] {
            b.apply(e);
        }
        let s = b.state.unwrap();
        assert_eq!((s.tag_count, s.status), (3, BatchStatus::Active));
    }
}
