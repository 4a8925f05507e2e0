//! `ringmesh ctl subscriber …`: the operator commands over the
//! Provisioning API. The binary's `ctl` parses the flags; [`run`] does the
//! work and writes to the streams it is given, so tests drive it in-process.
//!
//! Exit codes ([`Exit`]): 0 done, 1 the server refused (its message is
//! printed), 2 usage error (caught before anything is sent), 3 not found,
//! 4 provisioning (or its store) unavailable.

use std::io::{BufRead, Write};
use std::time::Duration;

use ringmesh_proto::provisioning as pb;
use ringmesh_proto::provisioning::provisioning_client::ProvisioningClient;
use serde_json::{Value, json};
use tonic::Code;

use ringmesh_provisioning::validate;

use super::Provisioning;

/// What `ctl` exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// The server answered with an error (message printed).
    Server = 1,
    /// Bad command line or input, nothing sent.
    Usage = 2,
    /// No such subscriber.
    NotFound = 3,
    /// Provisioning (or etcd behind it) cannot be reached.
    Unavailable = 4,
}

impl Exit {
    /// The exit code for a gRPC status.
    pub fn of(code: Code) -> Exit {
        match code {
            Code::Ok => Exit::Ok,
            Code::NotFound => Exit::NotFound,
            Code::Unavailable | Code::DeadlineExceeded => Exit::Unavailable,
            _ => Exit::Server,
        }
    }
}

/// How to give a password.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PasswordArgs {
    /// The password (visible in the process list: prefer --password-stdin
    /// or the environment variable).
    #[arg(
        long,
        env = "RINGMESH_SUBSCRIBER_PASSWORD",
        hide_env_values = true,
        conflicts_with = "password_stdin"
    )]
    pub password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

/// `ctl subscriber add`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AddArgs {
    /// The private identity (digest username), e.g. alice.
    pub private_id: String,
    /// A public identity (sip:, sips: or tel: URI); repeatable, at least one.
    #[arg(long = "public", required = true)]
    pub public: Vec<String>,
    /// An implicit registration set: comma-separated public identities
    /// that register together; repeatable.
    #[arg(long = "implicit-set")]
    pub implicit_set: Vec<String>,
    #[command(flatten)]
    pub password: PasswordArgs,
}

/// The `ctl subscriber` commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SubscriberCommand {
    /// Create a subscriber with its public identities and password.
    Add(AddArgs),
    /// Show a subscriber, by private identity or by a public identity
    /// (an argument starting with sip:, sips: or tel:).
    Get {
        /// Private identity, or a public identity (sip:/sips:/tel: URI).
        id: String,
    },
    /// List subscribers in private-identity order.
    List {
        /// Subscribers per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Continue from this token (printed after a partial list).
        #[arg(long, default_value = "")]
        page_token: String,
        /// Read every page.
        #[arg(long)]
        all: bool,
    },
    /// Replace a subscriber's password (pushed to every supernode at once).
    SetPassword {
        /// Private identity.
        id: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Bar a subscriber: no registration, no calls (403).
    Bar {
        /// Private identity.
        id: String,
        /// Why (kept for operators, never sent to the handset).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a barring.
    Unbar {
        /// Private identity.
        id: String,
    },
    /// Delete a subscriber and free its public identities.
    Delete {
        /// Private identity.
        id: String,
    },
    /// Replace a subscriber's initial filter criteria with those of a JSON
    /// file: `{"filter_criteria": [...]}`, each criterion as `get --json`
    /// prints it (an empty list removes them all).
    SetServices {
        /// Private identity.
        id: String,
        /// The JSON file, or - for standard input.
        file: String,
    },
    /// Set the region a subscriber is in (the services nearest to it, such
    /// as TURN relays, are those of that region); "" clears it (the region
    /// of the supernode it talks to).
    SetRegion {
        /// Private identity.
        id: String,
        /// 0 to 63 of a-z, 0-9 and '-'.
        region: String,
    },
}

/// Where a command reads and writes.
pub struct Io<'a> {
    pub stdin: &'a mut dyn BufRead,
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
}

impl std::fmt::Debug for Io<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Io")
    }
}

/// Deadline of each request.
pub const TIMEOUT: Duration = Duration::from_secs(5);

pub(super) enum Failure {
    Usage(String),
    Status(tonic::Status),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        Failure::Status(s)
    }
}

impl From<validate::FieldError> for Failure {
    fn from(e: validate::FieldError) -> Failure {
        Failure::Usage(e.to_string())
    }
}

/// Runs one `ctl subscriber` command against provisioning `p` and
/// returns the exit code.
pub async fn run(p: &Provisioning, json: bool, cmd: SubscriberCommand, io: &mut Io<'_>) -> Exit {
    let outcome = execute(p, json, cmd, io).await;
    conclude(&p.addr, json, outcome, io)
}

/// The exit code of a provisioning command, its failure reported.
pub(super) fn conclude(
    addr: &str,
    json: bool,
    outcome: Result<(), Failure>,
    io: &mut Io<'_>,
) -> Exit {
    match outcome {
        Ok(()) => Exit::Ok,
        Err(Failure::Usage(m)) => {
            report(io, json, "USAGE", &m);
            Exit::Usage
        }
        Err(Failure::Status(s))
            if addr.starts_with("http://")
                && matches!(s.code(), Code::Unknown | Code::Unavailable | Code::Internal) =>
        {
            let m = format!(
                "provisioning at {addr} did not answer plaintext gRPC ({}): is it running, \
                 or does it serve mutual TLS (then drop http:// and give --ca, --cert and --key)?",
                s.message()
            );
            report(io, json, "Unavailable", &m);
            Exit::of(Code::Unavailable)
        }
        Err(Failure::Status(s)) => {
            let code = format!("{:?}", s.code());
            let message = if s.code() == Code::Unavailable
                && (s.message().contains("connect") || s.message().contains("transport"))
            {
                format!(
                    "cannot reach provisioning at {addr} ({}); is it running? (--provisioning, RINGMESH_PROVISIONING)",
                    s.message()
                )
            } else {
                s.message().to_string()
            };
            report(io, json, &code, &message);
            Exit::of(s.code())
        }
    }
}

pub(super) fn report(io: &mut Io<'_>, json: bool, code: &str, message: &str) {
    if json {
        let _ = writeln!(
            io.err,
            "{}",
            json!({"error": {"code": code, "message": message}})
        );
    } else {
        let _ = writeln!(io.err, "error: {message}");
    }
}

pub(super) fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(TIMEOUT);
    r
}

fn read_password(p: PasswordArgs, io: &mut Io<'_>) -> Result<String, Failure> {
    let pw = match (p.password, p.password_stdin) {
        (Some(pw), false) => pw,
        (None, true) => {
            let mut line = String::new();
            io.stdin
                .read_line(&mut line)
                .map_err(|e| Failure::Usage(format!("cannot read the password: {e}")))?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
        (Some(_), true) => {
            return Err(Failure::Usage(
                "give --password or --password-stdin, not both".into(),
            ));
        }
        (None, false) => {
            return Err(Failure::Usage(
                "give the password with --password-stdin or --password".into(),
            ));
        }
    };
    validate::password(&pw)?;
    Ok(pw)
}

/// Reads subscriber `id`, changes it with `change` and writes it back if
/// no one changed it meanwhile (ABORTED otherwise).
async fn update(
    client: &mut ProvisioningClient<tonic::transport::Channel>,
    id: String,
    change: impl FnOnce(pb::Subscriber) -> pb::Subscriber,
) -> Result<pb::Subscriber, tonic::Status> {
    let old = client
        .get_subscriber(request(pb::GetSubscriberRequest {
            id: Some(pb::get_subscriber_request::Id::PrivateId(id)),
        }))
        .await?
        .into_inner();
    let expected_revision = old.revision;
    Ok(client
        .update_subscriber(request(pb::UpdateSubscriberRequest {
            subscriber: Some(change(old)),
            expected_revision,
        }))
        .await?
        .into_inner())
}

fn is_public(id: &str) -> bool {
    let l = id.to_ascii_lowercase();
    l.starts_with("sip:") || l.starts_with("sips:") || l.starts_with("tel:")
}

async fn execute(
    p: &Provisioning,
    json: bool,
    cmd: SubscriberCommand,
    io: &mut Io<'_>,
) -> Result<(), Failure> {
    // Check what can be checked before touching the network.
    let cmd = precheck(cmd)?;
    let channel = ringmesh_provisioning::cache::channel(&p.addr, TIMEOUT, p.tls.as_ref())
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let mut client = ProvisioningClient::new(channel);
    match cmd {
        SubscriberCommand::Add(a) => {
            let password = read_password(a.password, io)?;
            let implicit_sets = a
                .implicit_set
                .iter()
                .map(|s| pb::ImplicitSet {
                    public_ids: s.split(',').map(|p| p.trim().to_string()).collect(),
                })
                .collect();
            let sub = pb::Subscriber {
                private_id: a.private_id,
                public_ids: a.public,
                implicit_sets,
                ..Default::default()
            };
            let s = client
                .create_subscriber(request(pb::CreateSubscriberRequest {
                    subscriber: Some(sub),
                    password,
                }))
                .await?
                .into_inner();
            show(
                io,
                json,
                &s,
                &format!("created {} (revision {})", s.private_id, s.revision),
            );
        }
        SubscriberCommand::Get { id } => {
            let id = if is_public(&id) {
                pb::get_subscriber_request::Id::PublicId(id)
            } else {
                pb::get_subscriber_request::Id::PrivateId(id)
            };
            let s = client
                .get_subscriber(request(pb::GetSubscriberRequest { id: Some(id) }))
                .await?
                .into_inner();
            show(io, json, &s, "");
        }
        SubscriberCommand::List {
            page_size,
            page_token,
            all,
        } => {
            let mut token = page_token;
            let mut subs = Vec::new();
            loop {
                let page = client
                    .list_subscribers(request(pb::ListSubscribersRequest {
                        page_size,
                        page_token: token,
                    }))
                    .await?
                    .into_inner();
                subs.extend(page.subscribers);
                token = page.next_page_token;
                if !all || token.is_empty() {
                    break;
                }
            }
            if json {
                let list: Vec<Value> = subs.iter().map(subscriber_json).collect();
                let _ = writeln!(
                    io.out,
                    "{}",
                    json!({"subscribers": list, "next_page_token": token})
                );
            } else {
                let _ = write!(io.out, "{}", table(&subs));
                if !token.is_empty() {
                    let _ = writeln!(
                        io.err,
                        "more subscribers follow: add --page-token {token} (or --all)"
                    );
                }
            }
        }
        SubscriberCommand::SetPassword { id, password } => {
            let password = read_password(password, io)?;
            let s = client
                .set_password(request(pb::SetPasswordRequest {
                    private_id: id,
                    password,
                    expected_revision: 0,
                }))
                .await?
                .into_inner();
            brief(
                io,
                json,
                &s,
                &format!(
                    "password of {} changed (revision {})",
                    s.private_id, s.revision
                ),
            );
        }
        SubscriberCommand::Bar { id, reason } => {
            let s = client
                .set_barred(request(pb::SetBarredRequest {
                    private_id: id,
                    barred: true,
                    reason,
                    expected_revision: 0,
                }))
                .await?
                .into_inner();
            brief(
                io,
                json,
                &s,
                &format!("{} barred (revision {})", s.private_id, s.revision),
            );
        }
        SubscriberCommand::Unbar { id } => {
            let s = client
                .set_barred(request(pb::SetBarredRequest {
                    private_id: id,
                    barred: false,
                    reason: String::new(),
                    expected_revision: 0,
                }))
                .await?
                .into_inner();
            brief(
                io,
                json,
                &s,
                &format!("{} unbarred (revision {})", s.private_id, s.revision),
            );
        }
        SubscriberCommand::SetServices { id, file } => {
            let text = if file == "-" {
                let mut t = String::new();
                io.stdin
                    .read_to_string(&mut t)
                    .map_err(|e| Failure::Usage(format!("cannot read standard input: {e}")))?;
                t
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| Failure::Usage(format!("cannot read {file}: {e}")))?
            };
            let profile =
                profile_from_json(&text).map_err(|e| Failure::Usage(format!("{file}: {e}")))?;
            let s = update(&mut client, id, |old| pb::Subscriber {
                service_profile: Some(profile),
                ..old
            })
            .await?;
            show(
                io,
                json,
                &s,
                &format!(
                    "services of {} replaced (revision {})",
                    s.private_id, s.revision
                ),
            );
        }
        SubscriberCommand::SetRegion { id, region } => {
            let s = update(&mut client, id, |old| pb::Subscriber { region, ..old }).await?;
            brief(
                io,
                json,
                &s,
                &format!(
                    "{} is in region {:?} (revision {})",
                    s.private_id, s.region, s.revision
                ),
            );
        }
        SubscriberCommand::Delete { id } => {
            let r = client
                .delete_subscriber(request(pb::DeleteSubscriberRequest {
                    private_id: id.clone(),
                    expected_revision: 0,
                }))
                .await?
                .into_inner();
            if json {
                let _ = writeln!(
                    io.out,
                    "{}",
                    json!({"private_id": id, "deleted": true, "revision": r.revision})
                );
            } else {
                let _ = writeln!(io.out, "deleted {id} (revision {})", r.revision);
            }
        }
    }
    Ok(())
}

/// Refuses malformed identities before anything is sent.
fn precheck(cmd: SubscriberCommand) -> Result<SubscriberCommand, Failure> {
    match &cmd {
        SubscriberCommand::Add(a) => {
            validate::private_id("private_id", &a.private_id)?;
            let ids = validate::public_ids(&a.public)
                .map_err(|e| Failure::Usage(format!("--public: {}", e.message)))?;
            let sets: Vec<pb::ImplicitSet> = a
                .implicit_set
                .iter()
                .map(|s| pb::ImplicitSet {
                    public_ids: s.split(',').map(|p| p.trim().to_string()).collect(),
                })
                .collect();
            validate::implicit_sets(&sets, &ids)
                .map_err(|e| Failure::Usage(format!("--implicit-set: {}", e.message)))?;
        }
        SubscriberCommand::SetServices { id, .. } => {
            validate::private_id("private_id", id)?;
        }
        SubscriberCommand::SetRegion { id, region } => {
            validate::private_id("private_id", id)?;
            validate::region("region", region)?;
        }
        SubscriberCommand::Get { id } if is_public(id) => {
            validate::public_id("public_id", id)?;
        }
        SubscriberCommand::Get { id }
        | SubscriberCommand::SetPassword { id, .. }
        | SubscriberCommand::Bar { id, .. }
        | SubscriberCommand::Unbar { id }
        | SubscriberCommand::Delete { id } => {
            validate::private_id("private_id", id)?;
        }
        SubscriberCommand::List { page_size, .. } => {
            if !(1..=validate::MAX_PAGE_SIZE).contains(page_size) {
                return Err(Failure::Usage(format!(
                    "--page-size {page_size} is outside 1..{}",
                    validate::MAX_PAGE_SIZE
                )));
            }
        }
    }
    Ok(cmd)
}

/// A subscriber as JSON (the HA1 values are not printed: they are as
/// sensitive as the password within the realm).
pub fn subscriber_json(s: &pb::Subscriber) -> Value {
    let barring = s.barring.clone().unwrap_or_default();
    let creds = s.credentials.clone().unwrap_or_default();
    let criteria: Vec<Value> = s
        .service_profile
        .as_ref()
        .map(|p| p.filter_criteria.as_slice())
        .unwrap_or_default()
        .iter()
        .map(criterion_json)
        .collect();
    json!({
        "private_id": s.private_id,
        "public_ids": s.public_ids,
        "implicit_sets": s.implicit_sets.iter().map(|set| set.public_ids.clone()).collect::<Vec<_>>(),
        "credentials": {
            "realm": creds.realm,
            "ha1_md5": !creds.ha1_md5.is_empty(),
            "ha1_sha256": !creds.ha1_sha256.is_empty(),
        },
        "barred": barring.barred,
        "barred_reason": barring.reason,
        "region": s.region,
        "filter_criteria": criteria,
        "revision": s.revision,
        "created_unix_ms": s.created_unix_ms,
        "updated_unix_ms": s.updated_unix_ms,
    })
}

/// A filter criterion as JSON: what `set-services` reads back.
fn criterion_json(fc: &pb::FilterCriteria) -> Value {
    let short = |name: &str, prefix: &str| name.strip_prefix(prefix).unwrap_or(name).to_string();
    json!({
        "priority": fc.priority,
        "session_case": short(fc.session_case().as_str_name(), "SESSION_CASE_"),
        "condition_type": short(fc.condition_type().as_str_name(), "CONDITION_TYPE_"),
        "method": fc.method,
        "request_uri": fc.request_uri,
        "headers": fc.headers.iter().map(|h| json!({"header": h.header, "regex": h.regex, "negated": h.negated})).collect::<Vec<_>>(),
        "application_server": fc.application_server,
        "default_handling": short(fc.default_handling().as_str_name(), "DEFAULT_HANDLING_"),
    })
}

/// A service profile from its JSON form (see [`criterion_json`]); enum
/// values by their short or full name. Checked with the API's own
/// validation before anything is sent.
pub fn profile_from_json(text: &str) -> Result<pb::ServiceProfile, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let list = v
        .get("filter_criteria")
        .and_then(Value::as_array)
        .ok_or("expected {\"filter_criteria\": [...]}")?;
    let mut criteria = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        let at = |field: &str| format!("filter_criteria[{i}].{field}");
        let text = |field: &str| -> Result<String, String> {
            match c.get(field) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(format!("{}: expected a string", at(field))),
            }
        };
        let enumerated = |field: &str, prefix: &str, parse: fn(&str) -> Option<i32>| {
            let name = text(field)?;
            if name.is_empty() {
                return Ok(0);
            }
            let full = if name.starts_with(prefix) {
                name.clone()
            } else {
                format!("{prefix}{name}")
            };
            parse(&full).ok_or_else(|| format!("{}: unknown value '{name}'", at(field)))
        };
        let mut headers = Vec::new();
        for (j, h) in c
            .get("headers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let field = |f: &str| h.get(f).and_then(Value::as_str).unwrap_or_default();
            if field("header").is_empty() {
                return Err(format!(
                    "{}: a header name is needed",
                    at(&format!("headers[{j}]"))
                ));
            }
            headers.push(pb::HeaderMatch {
                header: field("header").to_string(),
                contains: field("contains").to_string(),
                regex: field("regex").to_string(),
                negated: h.get("negated").and_then(Value::as_bool).unwrap_or(false),
            });
        }
        let priority = c
            .get("priority")
            .and_then(Value::as_i64)
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| format!("{}: expected a 32-bit integer", at("priority")))?;
        criteria.push(pb::FilterCriteria {
            priority,
            method: text("method")?,
            headers,
            application_server: text("application_server")?,
            default_handling: enumerated("default_handling", "DEFAULT_HANDLING_", |n| {
                pb::DefaultHandling::from_str_name(n).map(|e| e as i32)
            })?,
            session_case: enumerated("session_case", "SESSION_CASE_", |n| {
                pb::SessionCase::from_str_name(n).map(|e| e as i32)
            })?,
            request_uri: text("request_uri")?,
            condition_type: enumerated("condition_type", "CONDITION_TYPE_", |n| {
                pb::ConditionType::from_str_name(n).map(|e| e as i32)
            })?,
        });
    }
    let profile = pb::ServiceProfile {
        filter_criteria: criteria,
    };
    validate::service_profile(Some(&profile))
        .map(Option::unwrap_or_default)
        .map_err(|e| e.to_string())
}

fn show(io: &mut Io<'_>, json: bool, s: &pb::Subscriber, headline: &str) {
    if json {
        let _ = writeln!(io.out, "{}", subscriber_json(s));
        return;
    }
    if !headline.is_empty() {
        let _ = writeln!(io.out, "{headline}");
    }
    let barring = s.barring.clone().unwrap_or_default();
    let creds = s.credentials.clone().unwrap_or_default();
    let mut rows: Vec<(&str, String)> = vec![
        ("private id", s.private_id.clone()),
        ("public ids", s.public_ids.join(", ")),
        (
            "implicit sets",
            if s.implicit_sets.is_empty() {
                "-".into()
            } else {
                s.implicit_sets
                    .iter()
                    .map(|set| format!("[{}]", set.public_ids.join(", ")))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        ),
        (
            "credentials",
            format!("HA1 MD5 + SHA-256, realm {}", creds.realm),
        ),
        (
            "barred",
            match (barring.barred, barring.reason.is_empty()) {
                (false, _) => "no".into(),
                (true, true) => "yes".into(),
                (true, false) => format!("yes ({})", barring.reason),
            },
        ),
    ];
    let criteria = s
        .service_profile
        .as_ref()
        .map(|p| p.filter_criteria.as_slice())
        .unwrap_or_default();
    if criteria.is_empty() {
        rows.push(("filter criteria", "-".into()));
    }
    for fc in criteria {
        let method = if fc.method.is_empty() {
            "any method"
        } else {
            &fc.method
        };
        let case = fc.session_case().as_str_name();
        let case = case.strip_prefix("SESSION_CASE_").unwrap_or(case);
        rows.push((
            "filter criteria",
            format!(
                "{}: {case} {method} -> {}",
                fc.priority, fc.application_server
            ),
        ));
    }
    rows.push(("revision", s.revision.to_string()));
    for (k, v) in rows {
        let _ = writeln!(io.out, "{k:<16}{v}");
    }
}

fn brief(io: &mut Io<'_>, json: bool, s: &pb::Subscriber, line: &str) {
    if json {
        let _ = writeln!(io.out, "{}", subscriber_json(s));
    } else {
        let _ = writeln!(io.out, "{line}");
    }
}

/// A readable table of subscribers.
pub fn table(subs: &[pb::Subscriber]) -> String {
    let header = ["PRIVATE ID", "PUBLIC IDS", "BARRED", "REVISION"];
    let rows: Vec<[String; 4]> = subs
        .iter()
        .map(|s| {
            [
                s.private_id.clone(),
                s.public_ids.join(","),
                if s.barring.as_ref().is_some_and(|b| b.barred) {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
                s.revision.to_string(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: [&str; 4], out: &mut String| {
        let text = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2]
        );
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header, &mut out);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3]], &mut out);
    }
    if rows.is_empty() {
        out.push_str("(no subscribers)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_reads_back_what_get_prints_and_says_what_is_wrong() {
        let text = r#"{"filter_criteria": [
            {"priority": 2, "session_case": "TERMINATING_UNREGISTERED",
             "application_server": "sip:192.0.2.9:5070", "default_handling": "SESSION_TERMINATED"},
            {"priority": 1, "session_case": "SESSION_CASE_ORIGINATING", "method": "INVITE",
             "request_uri": "^sip:\\+1", "condition_type": "ANY",
             "headers": [{"header": "Accept-Contact", "contains": "icsi"}, {"header": "X-Screened", "negated": true}],
             "application_server": "sip:192.0.2.8;transport=tcp"}
        ]}"#;
        let p = profile_from_json(text).unwrap();
        assert_eq!(p.filter_criteria[0].priority, 1, "sorted");
        assert_eq!(p.filter_criteria[0].headers[0].regex, "(?i)icsi");
        assert!(p.filter_criteria[0].headers[1].negated);
        assert_eq!(
            p.filter_criteria[1].session_case(),
            pb::SessionCase::TerminatingUnregistered
        );
        // What `get --json` prints reads back to the same profile.
        let printed = json!({
            "filter_criteria": p.filter_criteria.iter().map(criterion_json).collect::<Vec<_>>()
        });
        assert_eq!(profile_from_json(&printed.to_string()).unwrap(), p);
        for (bad, why) in [
            ("[]", "filter_criteria"),
            (r#"{"filter_criteria": [{"priority": "1"}]}"#, "priority"),
            (
                r#"{"filter_criteria": [{"priority": 1, "session_case": "SIDEWAYS", "application_server": "sip:10.0.0.1"}]}"#,
                "unknown value 'SIDEWAYS'",
            ),
            (
                r#"{"filter_criteria": [{"priority": 1, "request_uri": "(", "application_server": "sip:10.0.0.1"}]}"#,
                "request_uri",
            ),
            (
                r#"{"filter_criteria": [{"priority": 1, "application_server": "sip:as.example.net"}]}"#,
                "IP address",
            ),
            (
                r#"{"filter_criteria": [{"priority": 1, "headers": [{"regex": "x"}], "application_server": "sip:10.0.0.1"}]}"#,
                "header name",
            ),
        ] {
            let e = profile_from_json(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Exit::of(Code::NotFound) as u8, 3);
        assert_eq!(Exit::of(Code::Unavailable) as u8, 4);
        assert_eq!(Exit::of(Code::DeadlineExceeded) as u8, 4);
        assert_eq!(Exit::of(Code::AlreadyExists) as u8, 1);
        assert_eq!(Exit::of(Code::InvalidArgument) as u8, 1);
    }

    #[test]
    fn tables_align() {
        let s = pb::Subscriber {
            private_id: "alice".into(),
            public_ids: vec!["sip:alice@x".into()],
            revision: 3,
            ..Default::default()
        };
        let t = table(&[s]);
        assert!(
            t.starts_with("PRIVATE ID  PUBLIC IDS   BARRED  REVISION\n"),
            "{t}"
        );
        assert!(t.contains("alice       sip:alice@x  no      3"), "{t}");
    }
}

#[cfg(test)]
#[path = "subscriber_tests.rs"]
mod in_process;
