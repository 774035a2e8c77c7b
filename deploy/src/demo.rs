//! `voketag up --demo`: a factory, a product, an active batch with tags, and the
//! credentials to try them. Running it again reuses what it made the first time.

use std::net::SocketAddr;
use std::time::Duration;
use uuid::Uuid;
use voketag_commands::auth::DevIdp;
use voketag_commands::auth::api_key::generate;
use voketag_commands::store::EventStore;
use voketag_domain::api_key::{ApiKey, ApiKeyCommand};
use voketag_domain::batch::{Batch, BatchCommand, IssuedTag, NewBatch};
use voketag_domain::factory::{Factory, FactoryCommand};
use voketag_domain::product::{NewProduct, Product, ProductCommand};
use voketag_domain::{Gtin, Market, Role};
use voketag_platform::Settings;
use voketag_schemas::EventMetadata;

/// Fixed ids, so a second `--demo` finds the first one's data.
const FACTORY: Uuid = Uuid::from_u128(0x0199_0000_0000_7000_8000_0000_0000_0001);
const PRODUCT: Uuid = Uuid::from_u128(0x0199_0000_0000_7000_8000_0000_0000_0002);
const BATCH: Uuid = Uuid::from_u128(0x0199_0000_0000_7000_8000_0000_0000_0003);
const DEMO_TAGS: u128 = 5;

fn tag(i: u128) -> Uuid {
    Uuid::from_u128(0x0199_0000_0000_7000_8000_0000_0001_0000 + i)
}

pub async fn seed(
    settings: &Settings,
    pool: &sqlx::PgPool,
    addr: SocketAddr,
    scan_addr: SocketAddr,
) -> anyhow::Result<()> {
    let store = EventStore::new(pool.clone());
    let meta = EventMetadata {
        actor: "system:demo".into(),
        factory_id: FACTORY.to_string(),
        request_id: "demo".into(),
        correlation_id: "demo".into(),
        causation_id: "demo".into(),
        traceparent: voketag_platform::http::new_traceparent(),
    };
    let br = Market::parse("BR")?;
    let us = Market::parse("US")?;
    if store.load::<Factory>(&FACTORY.to_string()).await?.version == 0 {
        store
            .execute::<Factory>(
                &FACTORY.to_string(),
                FactoryCommand::RegisterFactory {
                    name: "Demo Factory".into(),
                },
                &meta,
                None,
            )
            .await?;
        store
            .execute::<Product>(
                &PRODUCT.to_string(),
                ProductCommand::RegisterProduct(NewProduct {
                    factory_id: FACTORY,
                    gtin: Gtin::parse("09506000134352")?,
                    name: "Vitamin C Serum 30 ml".into(),
                    brand: "Acme Labs".into(),
                    description: "Demo product".into(),
                    intended_markets: vec![br, us],
                }),
                &meta,
                None,
            )
            .await?;
        let mut unit = store.begin::<Batch>(&BATCH.to_string(), &meta).await?;
        unit.handle(BatchCommand::CreateBatch(NewBatch {
            factory_id: FACTORY,
            product_id: PRODUCT,
            product_markets: vec![br, us],
            lot: "DEMO-001".into(),
            production_date: chrono::Utc::now().date_naive(),
            sell_by: None,
            intended_markets: vec![],
        }))
        .await?;
        unit.handle(BatchCommand::IssueTags {
            import_id: None,
            tags: (1..=DEMO_TAGS)
                .map(|i| IssuedTag {
                    tag_id: tag(i),
                    serial: Some(format!("SN-{i:04}")),
                })
                .collect(),
        })
        .await?;
        unit.handle(BatchCommand::ActivateBatch).await?;
        unit.commit().await?;
    }
    let idp = DevIdp::load_or_create(
        pool,
        settings.jwt_issuer.clone(),
        settings.jwt_audience.clone(),
    )
    .await?;
    let token = idp.mint(
        "demo-user",
        FACTORY,
        Role::FactoryUser,
        Duration::from_secs(12 * 3600),
    )?;
    let key = generate();
    store
        .execute::<ApiKey>(
            &Uuid::now_v7().to_string(),
            ApiKeyCommand::IssueApiKey {
                factory_id: FACTORY,
                name: format!(
                    "demo key {}",
                    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S")
                ),
                role: Role::FactoryUser,
                prefix: key.prefix.clone(),
                secret_sha256: key.secret_sha256.clone(),
            },
            &meta,
            None,
        )
        .await?;
    let base = format!("http://{addr}");
    println!("VokeTag demo is ready.\n");
    println!("  factory id  {FACTORY}");
    println!("  product     {base}/v1/products/{PRODUCT}");
    println!("  batch       {base}/v1/batches/{BATCH}");
    println!(
        "  tags        {}",
        (1..=DEMO_TAGS)
            .map(|i| tag(i).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("\n  token (factory_user, 12 h):\n    {token}");
    println!("  API key (shown once):\n    {}", key.full_key);
    println!("\n  scan (JSON, or open in a browser):");
    for i in 1..=DEMO_TAGS {
        println!("    http://{scan_addr}/v1/scan/{}", tag(i));
    }
    println!("\nTry:");
    println!("  curl -H 'Authorization: Bearer {token}' {base}/v1/batches/{BATCH}");
    println!("  curl -H 'X-API-Key: {}' {base}/v1/products", key.full_key);
    println!(
        "  printf 'tag_id\\n%s\\n' $(cat /proc/sys/kernel/random/uuid) | curl -H 'X-API-Key: {}' -H 'Content-Type: text/csv' --data-binary @- {base}/v1/batches/{BATCH}/imports",
        key.full_key
    );
    println!("  curl {base}/openapi.json\n");
    Ok(())
}
