//! `cleave webhook …`: the CLI side of `/api/v1/webhook`.

use anyhow::Result;
use clap::Subcommand;
use cleave_api::model::{SetWebhook, WebhookSecret, WebhookView};

use super::client::{Client, ServerArgs};
use super::output::{note, out, print_json, Fields, Format};

#[derive(Subcommand, Debug)]
pub enum WebhookCommand {
    /// Send every event to URL (http:// or https://), signed with a new secret that is printed
    /// once; setting it again replaces the URL and the secret.
    Set {
        /// Where the events are POSTed as JSON.
        url: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show the webhook and its deliveries since the gateway started.
    Show {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Send events to no webhook; those waiting are dropped.
    Remove {
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub fn run(cmd: WebhookCommand, format: Format) -> Result<()> {
    match cmd {
        WebhookCommand::Set { url, server } => {
            let s: WebhookSecret = Client::new(&server)?.put("/webhook", &SetWebhook { url })?;
            match format {
                Format::Json => print_json(&s)?,
                Format::Human => out(&s.secret)?,
            }
            note(&format!("events go to {}, signed with the secret above: shown once, keep it secret", s.url));
        }
        WebhookCommand::Show { server } => {
            let v: WebhookView = Client::new(&server)?.get("/webhook")?;
            match format {
                Format::Json => print_json(&v)?,
                Format::Human => show(&v)?,
            }
        }
        WebhookCommand::Remove { server } => {
            Client::new(&server)?.delete("/webhook")?;
            note("webhook removed: events are no longer sent");
        }
    }
    Ok(())
}

fn show(v: &WebhookView) -> Result<()> {
    let mut t = Fields::default();
    t.add("url", v.url.as_deref().unwrap_or("- (none: events are not sent)"));
    t.add("queued", v.queued.to_string());
    t.add("delivered", v.delivered.to_string());
    t.add("failed", format!("{} attempts", v.failed));
    t.add("dropped", v.dropped.to_string());
    t.add("last error", v.last_error.as_deref().unwrap_or("-"));
    out(&t.render())
}
