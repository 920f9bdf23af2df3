//! Shared application state handed to every handler: config, store, authenticator, model registry.
//! No globals: tests build as many independent states as they like.

use std::sync::Arc;

use skygate_core::models::ModelRegistry;
use skygate_store::objects::Objects;
use skygate_store::DynStore;

use crate::api::ModelCatalog;
use crate::auth::Authenticator;
use crate::config::Config;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    config: Arc<Config>,
    store: DynStore,
    objects: Objects,
    auth: Arc<Authenticator>,
    models: ModelRegistry,
    catalog: ModelCatalog,
    public_url: String,
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        store: DynStore,
        objects: Objects,
        auth: Arc<Authenticator>,
        models: ModelRegistry,
        public_url: String,
    ) -> Result<Self, serde_json::Error> {
        let catalog = ModelCatalog::new(&models)?;
        Ok(AppState(Arc::new(Inner {
            config,
            store,
            objects,
            auth,
            models,
            catalog,
            public_url,
        })))
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    pub fn store(&self) -> &DynStore {
        &self.0.store
    }

    /// Sealed object storage for outputs.
    pub fn objects(&self) -> &Objects {
        &self.0.objects
    }

    pub fn auth(&self) -> &Authenticator {
        &self.0.auth
    }

    pub fn models(&self) -> &ModelRegistry {
        &self.0.models
    }

    /// The Models API answers, serialised once.
    pub fn catalog(&self) -> &ModelCatalog {
        &self.0.catalog
    }

    /// Base for absolute URLs in responses, no trailing slash.
    pub fn public_url(&self) -> &str {
        &self.0.public_url
    }
}
