//! Map pages on the targets: written and read like journal objects (the metadata key,
//! the write quorum, create-only), under opaque names (see `naming`).

use std::sync::Arc;

use super::{Page, StoredPage};
use crate::journal::{Journal, Stored};
use crate::VolumeError;

impl Journal<'_> {
    fn page_object(&self, page: u64, version: u64) -> (String, cleave_split::ChunkId) {
        crate::naming::page_object(self.keys, self.uuid, self.volume, page, version)
    }

    /// Reads and checks one stored page version.
    pub async fn read_page(&self, page: u64, version: u64) -> Result<Arc<Page>, VolumeError> {
        let (key, id) = self.page_object(page, version);
        let (body, _) = self
            .dispersal
            .read_decoded(&key, self.codec, self.keys, &id, self.hedge_after)
            .await
            .map_err(|e| VolumeError::MetadataUnavailable(format!("map page {page} version {version}: {e}")))?;
        Ok(Arc::new(StoredPage::parse(&body, page, version)?))
    }

    /// Stores a page version; Ok once at least the write quorum holds it.
    pub async fn write_page(&self, page: u64, version: u64, data: &Page) -> Result<Stored, VolumeError> {
        let (key, id) = self.page_object(page, version);
        let body = StoredPage::new(page, version, data).to_bytes();
        self.write_object(&key, id, body).await
    }

    /// Deletes a page version from every target (best effort: scrub finds leftovers).
    pub async fn delete_page(&self, page: u64, version: u64) {
        let (key, _) = self.page_object(page, version);
        self.dispersal.delete_all(&key).await;
    }
}
