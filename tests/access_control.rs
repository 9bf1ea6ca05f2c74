//! Access control as RabbitMQ models it: for every operation, a user with
//! exactly the permissions it needs succeeds, and a user missing any one of
//! them is refused — with an error naming the permission, the user, the
//! virtual host and the resource — while nothing changes and the
//! connection stays usable (granting the missing permission then lets the
//! very same connection do it). Also: topic permissions with `{username}`,
//! `user_id` spoofing, a custom backend deciding at runtime, logins.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use interoffice::{
    AccessRefused, AuthBackend, AuthBackendError, AuthenticatedUser, BindError, Broker, BrokerOptions,
    ConnectError, ConnectOptions, Connection, ConsumeError, ConsumeOptions, Credentials, DeclareError,
    DeleteError, DeleteExchangeOptions, DeleteQueueOptions, ErrorKind, ExchangeKind, ExchangeOptions,
    FieldTable, Message, Permission, Permissions, PublishError, QueueOptions, Refusal, Resource,
    TopicPermissions, UserError,
};

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

const VHOST: &str = "shop";
const USER: &str = "module";

/// The refusal inside any operation's error, if it is one.
fn refusal(error: &(dyn Error + 'static)) -> Option<AccessRefused> {
    if let Some(DeclareError::NotPermitted(r)) = error.downcast_ref() {
        return Some(r.clone());
    }
    if let Some(BindError::NotPermitted(r)) = error.downcast_ref() {
        return Some(r.clone());
    }
    if let Some(DeleteError::NotPermitted(r)) = error.downcast_ref() {
        return Some(r.clone());
    }
    if let Some(ConsumeError::NotPermitted(r)) = error.downcast_ref() {
        return Some(r.clone());
    }
    if let Some(PublishError::NotPermitted { refused, .. }) = error.downcast_ref() {
        return Some(refused.clone());
    }
    None
}

fn q(name: &str) -> Resource {
    Resource::Queue(name.into())
}

fn x(name: &str) -> Resource {
    Resource::Exchange(name.into())
}

/// Patterns granting exactly `grants`: each permission's pattern matches
/// exactly the names granted it (`""`, denying all, when none).
fn permissions_for(grants: &[(Permission, Resource)]) -> Permissions {
    let pattern = |permission: Permission| {
        let names: Vec<String> =
            grants.iter().filter(|(p, _)| *p == permission).map(|(_, r)| regex_escape(r.name())).collect();
        if names.is_empty() { String::new() } else { format!("^(?:{})$", names.join("|")) }
    };
    Permissions {
        configure: pattern(Permission::Configure),
        write: pattern(Permission::Write),
        read: pattern(Permission::Read),
    }
}

fn regex_escape(name: &str) -> String {
    name.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$#&-~".contains(c);
            special.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}

/// A broker with vhost `shop`, an admin connection there (guest, all
/// rights), and user `module` with exactly `grants`, connected.
fn setup(grants: &[(Permission, Resource)]) -> (Broker, Connection, Connection) {
    let broker = Broker::new();
    broker.add_vhost(VHOST).unwrap();
    broker.set_permissions("guest", VHOST, &Permissions::full()).unwrap();
    broker.add_user(USER, &Credentials::password("pw"), &[]).unwrap();
    broker.set_permissions(USER, VHOST, &permissions_for(grants)).unwrap();
    let admin = broker.connect_with(ConnectOptions { vhost: VHOST.into(), ..Default::default() }).unwrap();
    let user = broker.connect_with(ConnectOptions::new(VHOST, USER, Credentials::password("pw"))).unwrap();
    (broker, admin, user)
}

/// What an observer can see of the topology, to check a refusal changed nothing.
fn topology(broker: &Broker) -> String {
    let vhost = broker.vhost(VHOST).unwrap();
    let counts: Vec<String> = vhost
        .queue_names()
        .iter()
        .map(|name| format!("{name}:{}", vhost.queue_stats(name).unwrap().messages_ready))
        .collect();
    format!("{:?} {counts:?} {:?}", vhost.exchange_names(), vhost.bindings())
}

type Setup = fn(&Connection) -> Result;
type Operation = fn(&Connection) -> Result;

struct Case {
    name: &'static str,
    setup: Setup,
    operation: Operation,
    needs: Vec<(Permission, Resource)>,
}

fn topology_for_cases(admin: &Connection) -> Result {
    admin.declare_exchange("x.orders", ExchangeKind::Topic, ExchangeOptions::default())?;
    admin.declare_exchange("x.audit", ExchangeKind::Fanout, ExchangeOptions::default())?;
    admin.declare_queue("q.billing", QueueOptions::default())?;
    admin.publish("", "q.billing", Message::new("ready"))?;
    Ok(())
}

fn nothing(_: &Connection) -> Result {
    Ok(())
}

fn cases() -> Vec<Case> {
    use Permission::{Configure, Read, Write};
    vec![
        Case {
            name: "declare exchange",
            setup: nothing,
            operation: |c| {
                Ok(c.declare_exchange("x.new", ExchangeKind::Direct, ExchangeOptions::default())?)
            },
            needs: vec![(Configure, x("x.new"))],
        },
        Case {
            name: "declare exchange with an alternate exchange",
            setup: topology_for_cases,
            operation: |c| {
                let options =
                    ExchangeOptions { alternate_exchange: Some("x.audit".into()), ..Default::default() };
                Ok(c.declare_exchange("x.new", ExchangeKind::Direct, options)?)
            },
            needs: vec![(Configure, x("x.new")), (Read, x("x.new")), (Write, x("x.audit"))],
        },
        Case {
            name: "delete exchange",
            setup: topology_for_cases,
            operation: |c| Ok(c.delete_exchange("x.orders", DeleteExchangeOptions::default())?),
            needs: vec![(Configure, x("x.orders"))],
        },
        Case {
            name: "declare queue",
            setup: nothing,
            operation: |c| Ok(c.declare_queue("q.new", QueueOptions::default()).map(drop)?),
            needs: vec![(Configure, q("q.new"))],
        },
        Case {
            name: "declare queue with a dead-letter exchange",
            setup: topology_for_cases,
            operation: |c| {
                let options =
                    QueueOptions { dead_letter_exchange: Some("x.audit".into()), ..Default::default() };
                Ok(c.declare_queue("q.new", options).map(drop)?)
            },
            needs: vec![(Configure, q("q.new")), (Read, q("q.new")), (Write, x("x.audit"))],
        },
        Case {
            name: "declare queue with a dead-letter exchange as an argument",
            setup: topology_for_cases,
            operation: |c| {
                let arguments = FieldTable::new().with("x-dead-letter-exchange", "");
                Ok(c.declare_queue("q.new", QueueOptions { arguments, ..Default::default() }).map(drop)?)
            },
            needs: vec![(Configure, q("q.new")), (Read, q("q.new")), (Write, x("amq.default"))],
        },
        Case {
            name: "delete queue",
            setup: topology_for_cases,
            operation: |c| Ok(c.delete_queue("q.billing", DeleteQueueOptions::default()).map(drop)?),
            needs: vec![(Configure, q("q.billing"))],
        },
        Case {
            name: "purge queue",
            setup: topology_for_cases,
            operation: |c| Ok(c.purge_queue("q.billing").map(drop)?),
            needs: vec![(Read, q("q.billing"))],
        },
        Case {
            name: "bind queue",
            setup: topology_for_cases,
            operation: |c| Ok(c.bind_queue("q.billing", "x.audit", "", None)?),
            needs: vec![(Write, q("q.billing")), (Read, x("x.audit"))],
        },
        Case {
            name: "unbind queue",
            setup: |admin| {
                topology_for_cases(admin)?;
                Ok(admin.bind_queue("q.billing", "x.audit", "", None)?)
            },
            operation: |c| Ok(c.unbind_queue("q.billing", "x.audit", "", None)?),
            needs: vec![(Write, q("q.billing")), (Read, x("x.audit"))],
        },
        Case {
            name: "bind exchange",
            setup: topology_for_cases,
            operation: |c| Ok(c.bind_exchange("x.audit", "x.orders", "order.#", None)?),
            needs: vec![(Write, x("x.audit")), (Read, x("x.orders"))],
        },
        Case {
            name: "unbind exchange",
            setup: |admin| {
                topology_for_cases(admin)?;
                Ok(admin.bind_exchange("x.audit", "x.orders", "order.#", None)?)
            },
            operation: |c| Ok(c.unbind_exchange("x.audit", "x.orders", "order.#", None)?),
            needs: vec![(Write, x("x.audit")), (Read, x("x.orders"))],
        },
        Case {
            name: "publish",
            setup: |admin| {
                topology_for_cases(admin)?;
                Ok(admin.bind_queue("q.billing", "x.audit", "", None)?)
            },
            operation: |c| Ok(c.publish("x.audit", "", Message::new("m")).map(drop)?),
            needs: vec![(Write, x("x.audit"))],
        },
        Case {
            name: "publish to the default exchange (amq.default)",
            setup: topology_for_cases,
            operation: |c| Ok(c.publish("", "q.billing", Message::new("m")).map(drop)?),
            needs: vec![(Write, x("amq.default"))],
        },
        Case {
            name: "publish through amq.fanout",
            setup: |admin| {
                topology_for_cases(admin)?;
                Ok(admin.bind_queue("q.billing", "amq.fanout", "", None)?)
            },
            operation: |c| Ok(c.publish("amq.fanout", "", Message::new("m")).map(drop)?),
            needs: vec![(Write, x("amq.fanout"))],
        },
        Case {
            name: "publisher",
            setup: topology_for_cases,
            operation: |c| Ok(c.publisher("x.audit").map(drop)?),
            needs: vec![(Write, x("x.audit"))],
        },
        Case {
            name: "consume",
            setup: topology_for_cases,
            operation: |c| Ok(c.consume("q.billing", ConsumeOptions::default()).map(drop)?),
            needs: vec![(Read, q("q.billing"))],
        },
        Case {
            name: "get",
            setup: topology_for_cases,
            operation: |c| {
                let delivery = c.get("q.billing", false)?.expect("a message is ready");
                Ok(delivery.nack(true)?)
            },
            needs: vec![(Read, q("q.billing"))],
        },
        Case {
            name: "last will",
            setup: topology_for_cases,
            operation: |c| Ok(c.set_will("x.audit", "", Message::new("gone"))?),
            needs: vec![(Write, x("x.audit"))],
        },
    ]
}

#[test]
fn every_operation_needs_exactly_its_permissions() -> Result {
    for case in cases() {
        // Exactly the permissions it needs: it succeeds.
        let (_broker, admin, user) = setup(&case.needs);
        (case.setup)(&admin)?;
        (case.operation)(&user).map_err(|e| format!("{}: with every permission it needs: {e}", case.name))?;

        // Any one missing: refused, naming it; nothing changed; and the
        // same connection does it once the permission is granted.
        for missing in 0..case.needs.len() {
            let granted: Vec<_> = case
                .needs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != missing)
                .map(|(_, g)| g.clone())
                .collect();
            let (broker, admin, user) = setup(&granted);
            (case.setup)(&admin)?;
            let before = topology(&broker);
            let error = (case.operation)(&user)
                .expect_err(&format!("{}: refused without {:?}", case.name, case.needs[missing]));
            let refused =
                refusal(&*error).unwrap_or_else(|| panic!("{}: not an access refusal: {error}", case.name));
            let (permission, resource) = &case.needs[missing];
            assert_eq!(
                (refused.user.as_str(), refused.vhost.as_str(), &refused.refusal),
                (USER, VHOST, &Refusal::Resource { permission: *permission, resource: resource.clone() }),
                "{}",
                case.name
            );
            let kind = match resource {
                Resource::Exchange(_) => "exchange",
                Resource::Queue(_) => "queue",
            };
            assert_eq!(
                error.to_string(),
                format!(
                    "ACCESS_REFUSED - {permission} access to {kind} '{}' in vhost '{VHOST}' refused for user '{USER}'",
                    resource.name()
                ),
                "{}",
                case.name
            );
            assert_eq!(topology(&broker), before, "{}: a refused operation changes nothing", case.name);
            assert!(!user.is_closed(), "{}", case.name);
            broker.set_permissions(USER, VHOST, &permissions_for(&case.needs))?;
            (case.operation)(&user)
                .map_err(|e| format!("{}: the same connection, once granted: {e}", case.name))?;
        }
    }
    Ok(())
}

#[test]
fn a_server_named_queue_needs_configure_on_its_generated_name() -> Result {
    let (_broker, _admin, user) = setup(&[]);
    let error = user.declare_queue("", QueueOptions { exclusive: true, ..Default::default() }).unwrap_err();
    let DeclareError::NotPermitted(refused) = &error else { panic!("{error}") };
    assert!(
        matches!(&refused.refusal, Refusal::Resource { permission: Permission::Configure, resource: Resource::Queue(name) } if name.starts_with("amq.gen-")),
        "{error}"
    );

    let (broker, _admin, user) = setup(&[]);
    broker.set_permissions(USER, VHOST, &Permissions::new("^amq\\.gen-", "", ""))?;
    let name = user.declare_queue("", QueueOptions { exclusive: true, ..Default::default() })?;
    assert!(name.starts_with("amq.gen-"));
    Ok(())
}

#[test]
fn a_passive_declare_needs_any_one_permission() -> Result {
    for permission in [Permission::Configure, Permission::Write, Permission::Read] {
        let (_broker, admin, user) = setup(&[(permission, q("q.billing")), (permission, x("x.orders"))]);
        topology_for_cases(&admin)?;
        user.declare_queue("q.billing", QueueOptions { passive: true, ..Default::default() })?;
        user.declare_exchange(
            "x.orders",
            ExchangeKind::Topic,
            ExchangeOptions { passive: true, ..Default::default() },
        )?;
        user.queue_stats("q.billing")?;
    }
    let (_broker, admin, user) = setup(&[]);
    topology_for_cases(&admin)?;
    let error =
        user.declare_queue("q.billing", QueueOptions { passive: true, ..Default::default() }).unwrap_err();
    assert_eq!(
        error,
        DeclareError::NotPermitted(AccessRefused {
            user: USER.into(),
            vhost: VHOST.into(),
            refusal: Refusal::AnyPermission { resource: q("q.billing") },
        })
    );
    assert!(matches!(user.queue_stats("q.billing"), Err(ConsumeError::NotPermitted(_))));
    // Refused before it is looked up: a missing queue reads the same.
    let missing =
        user.declare_queue("q.nowhere", QueueOptions { passive: true, ..Default::default() }).unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::AccessRefused);
    Ok(())
}

#[test]
fn publishing_is_checked_before_the_exchange_is_looked_up() -> Result {
    let (_broker, _admin, user) = setup(&[]);
    let error = user.publish("x.nowhere", "", Message::new("probe")).unwrap_err();
    assert_eq!(
        error.kind(),
        ErrorKind::AccessRefused,
        "no write: a refused user learns nothing of what exists"
    );
    assert_eq!(error.into_message().body().as_ref(), b"probe", "the message comes back");
    let (_broker, _admin, user) = setup(&[(Permission::Write, x("x.nowhere"))]);
    let error = user.publish("x.nowhere", "", Message::new("probe")).unwrap_err();
    assert!(matches!(error, PublishError::ExchangeNotFound { ref vhost, .. } if vhost == VHOST), "{error}");
    Ok(())
}

#[test]
fn permission_patterns_are_unanchored_and_an_empty_one_denies() -> Result {
    let (broker, admin, user) = setup(&[]);
    topology_for_cases(&admin)?;
    broker.set_permissions(USER, VHOST, &Permissions::new("", "orders", ""))?;
    user.publish("x.orders", "order.1", Message::new("m"))?; // "orders" matches inside "x.orders"
    assert!(user.publish("x.audit", "", Message::new("m")).is_err());
    assert!(user.declare_queue("anything", QueueOptions::default()).is_err(), "empty configure denies");
    Ok(())
}

#[test]
fn permissions_changed_take_effect_on_open_connections() -> Result {
    let (broker, admin, user) = setup(&[(Permission::Write, x("x.audit"))]);
    topology_for_cases(&admin)?;
    let publisher = user.publisher("x.audit")?;
    for _ in 0..3 {
        user.publish("x.audit", "", Message::new("cached"))?;
        publisher.publish("", Message::new("cached"))?;
    }
    broker.clear_permissions(USER, VHOST)?;
    assert!(matches!(user.publish("x.audit", "", Message::new("m")), Err(PublishError::NotPermitted { .. })));
    assert!(matches!(publisher.publish("", Message::new("m")), Err(PublishError::NotPermitted { .. })));
    broker.set_permissions(USER, VHOST, &Permissions::new("", "^x\\.audit$", ""))?;
    user.publish("x.audit", "", Message::new("again"))?;
    broker.delete_user(USER)?;
    assert!(matches!(publisher.publish("", Message::new("m")), Err(PublishError::NotPermitted { .. })));
    Ok(())
}

#[test]
fn topic_permissions_expand_username_and_vhost() -> Result {
    let broker = Broker::new();
    broker.add_vhost(VHOST)?;
    broker.set_permissions("guest", VHOST, &Permissions::full())?;
    let admin = broker.connect_with(ConnectOptions { vhost: VHOST.into(), ..Default::default() })?;
    admin.declare_exchange("events", ExchangeKind::Topic, ExchangeOptions::default())?;
    admin.declare_queue("all", QueueOptions::default())?;
    admin.bind_queue("all", "events", "#", None)?;
    for name in ["alice", "a.*"] {
        broker.add_user(name, &Credentials::password("pw"), &[])?;
        broker.set_permissions(name, VHOST, &Permissions::new("^mine", ".*", ".*"))?;
        broker.set_topic_permissions(
            name,
            VHOST,
            &TopicPermissions {
                exchange: "events".into(),
                write: "^{username}\\.".into(),
                read: "^{vhost}\\.{username}\\.".into(),
            },
        )?;
    }
    let alice = broker.connect_with(ConnectOptions::new(VHOST, "alice", Credentials::password("pw")))?;
    alice.publish("events", "alice.signed-in", Message::new("ok"))?;
    let error = alice.publish("events", "bob.signed-in", Message::new("spoof")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "ACCESS_REFUSED - write access to topic 'bob.signed-in' in exchange 'events' in vhost 'shop' refused for user 'alice'"
    );
    assert_eq!(error.into_message().body().as_ref(), b"spoof");

    // Binding keys: the topic read permission.
    alice.declare_queue("mine.alice", QueueOptions::default())?;
    alice.bind_queue("mine.alice", "events", "shop.alice.#", None)?;
    let refused = alice.bind_queue("mine.alice", "events", "#", None).unwrap_err();
    assert!(
        matches!(&refused, BindError::NotPermitted(AccessRefused { refusal: Refusal::Topic { .. }, .. })),
        "{refused}"
    );
    assert_eq!(broker.vhost(VHOST).unwrap().bindings().len(), 2, "the refused binding was not made");

    // The user's name is escaped: `a.*` is literal, not a wildcard.
    let star = broker.connect_with(ConnectOptions::new(VHOST, "a.*", Credentials::password("pw")))?;
    star.publish("events", "a.*.x", Message::new("ok"))?;
    assert!(star.publish("events", "ab.x", Message::new("no")).is_err());
    assert!(star.publish("events", "alice.x", Message::new("no")).is_err());

    // Topic permissions apply to topic exchanges only; other exchanges: the resource permission alone.
    admin.declare_exchange("plain", ExchangeKind::Direct, ExchangeOptions::default())?;
    alice.publish("plain", "bob.anything", Message::new("ok"))?;
    Ok(())
}

#[test]
fn user_id_must_be_the_connections_user_unless_impersonator() -> Result {
    let broker = Broker::new();
    broker.add_user("alice", &Credentials::password("pw"), &[])?;
    broker.add_user("gateway", &Credentials::password("pw"), &[interoffice::IMPERSONATOR_TAG])?;
    for user in ["alice", "gateway"] {
        broker.set_permissions(user, "/", &Permissions::full())?;
    }
    let admin = broker.connect();
    admin.declare_queue("inbox", QueueOptions::default())?;
    let alice = broker.connect_with(ConnectOptions::new("/", "alice", Credentials::password("pw")))?;
    alice.publish("", "inbox", Message::new("mine").with_user_id("alice"))?;
    let error = alice.publish("", "inbox", Message::new("spoof").with_user_id("bob")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'alice'"
    );
    assert_eq!(error.kind(), ErrorKind::PreconditionFailed, "as RabbitMQ 3.10.8 answers it");
    assert_eq!(error.into_message().body().as_ref(), b"spoof");

    let gateway = broker.connect_with(ConnectOptions::new("/", "gateway", Credentials::password("pw")))?;
    gateway.publish("", "inbox", Message::new("on behalf").with_user_id("bob"))?;
    assert_eq!(broker.queue_stats("inbox")?.messages_ready, 2);
    Ok(())
}

#[test]
fn logging_in_checks_user_credentials_and_vhost() -> Result {
    let broker = Broker::new();
    broker.add_vhost("tenant-a")?;
    broker.add_user("alice", &Credentials::password("right"), &[])?;
    let login = |vhost: &str, user: &str, password: &str| {
        broker.connect_with(ConnectOptions::new(vhost, user, Credentials::password(password)))
    };
    let wrong = login("/", "alice", "wrong").unwrap_err();
    let unknown = login("/", "mallory", "right").unwrap_err();
    assert_eq!(
        wrong.to_string(),
        "ACCESS_REFUSED - login refused for user 'alice': unknown user or wrong credentials"
    );
    assert!(matches!(&unknown, ConnectError::AccessRefused(AccessRefused { refusal: Refusal::Login, .. })));
    // No permissions in '/': no access to it.
    let no_access = login("/", "alice", "right").unwrap_err();
    assert_eq!(no_access.to_string(), "ACCESS_REFUSED - access to vhost '/' refused for user 'alice'");
    assert_eq!(
        login("nowhere", "alice", "right").unwrap_err(),
        ConnectError::VhostNotFound("nowhere".into())
    );
    broker.set_permissions("alice", "tenant-a", &Permissions::full())?;
    let conn = login("tenant-a", "alice", "right")?;
    assert_eq!((conn.user(), conn.vhost()), ("alice", "tenant-a"));
    // The default login is RabbitMQ's guest/guest on '/'.
    let guest = broker.connect_with(ConnectOptions::default())?;
    assert_eq!((guest.user(), guest.vhost()), ("guest", "/"));
    Ok(())
}

#[test]
fn credentials_never_show_in_debug_output_or_errors() -> Result {
    let broker = Broker::new();
    broker.add_user("alice", &Credentials::password("hunter2-secret"), &[])?;
    let options = ConnectOptions::new("/", "alice", Credentials::password("hunter2-secret"));
    let error = broker.connect_with(options.clone()).unwrap_err();
    let everything = format!(
        "{options:?} {error} {error:?} {broker:?} {:?} {:?} {}",
        broker.users(),
        broker.users().users(),
        serde_json::to_string(&broker.export_definitions())?
    );
    assert!(!everything.contains("hunter2"), "{everything}");
    Ok(())
}

#[test]
fn bad_patterns_and_names_are_refused_never_a_panic() -> Result {
    let broker = Broker::new();
    broker.add_user("alice", &Credentials::password("pw"), &[])?;
    for pattern in [
        "(unclosed",
        "(?=lookahead)",
        "\\1",
        &"(".repeat(500),
        &"x".repeat(10_000),
        "\\w{1000}\\w{1000}\\w{1000}",
    ] {
        let error = broker.set_permissions("alice", "/", &Permissions::new(pattern, ".*", ".*")).unwrap_err();
        assert!(matches!(error, UserError::InvalidPattern(_)), "{error}");
        let topic =
            TopicPermissions { exchange: "amq.topic".into(), write: pattern.into(), read: ".*".into() };
        assert!(broker.set_topic_permissions("alice", "/", &topic).is_err());
    }
    assert_eq!(broker.users().permissions("alice", "/"), None, "nothing was set");
    // A pattern that backtracks catastrophically in PCRE runs in linear time
    // here: the publish is decided, not stalled.
    broker.set_permissions("alice", "/", &Permissions::new("", "(x+x+)+y", ""))?;
    let alice = broker.connect_with(ConnectOptions::new("/", "alice", Credentials::password("pw")))?;
    let name = "x".repeat(255);
    broker.connect().declare_exchange(&name, ExchangeKind::Fanout, ExchangeOptions::default())?;
    assert!(matches!(alice.publish(&name, "", Message::new("m")), Err(PublishError::NotPermitted { .. })));
    assert_eq!(
        broker.set_permissions("nobody", "/", &Permissions::full()),
        Err(UserError::NoSuchUser("nobody".into()))
    );
    assert_eq!(
        broker.set_permissions("alice", "nowhere", &Permissions::full()),
        Err(UserError::NoSuchVhost("nowhere".into()))
    );
    assert!(broker.add_user("", &Credentials::password("pw"), &[]).is_err());
    assert!(broker.add_user(&"u".repeat(300), &Credentials::password("pw"), &[]).is_err());
    assert_eq!(
        broker.add_user("alice", &Credentials::password("pw"), &[]),
        Err(UserError::UserExists("alice".into()))
    );
    assert!(broker.add_vhost("").is_err());
    assert_eq!(broker.add_vhost("/"), Err(UserError::VhostExists("/".into())));
    assert_eq!(broker.delete_vhost("/"), Err(UserError::DefaultVhost));
    assert_eq!(broker.delete_vhost("nowhere"), Err(UserError::NoSuchVhost("nowhere".into())));
    Ok(())
}

/// Everyone may do everything until the switch is thrown; `cacheable`
/// says whether it lets connections cache decisions (with a revision).
struct Switch {
    thrown: AtomicBool,
    failing: AtomicBool,
    revision: AtomicU64,
    cacheable: bool,
}

impl Switch {
    fn new(cacheable: bool) -> Arc<Switch> {
        Arc::new(Switch {
            thrown: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            revision: AtomicU64::new(0),
            cacheable,
        })
    }

    fn throw(&self) {
        self.thrown.store(true, Ordering::SeqCst);
        self.revision.fetch_add(1, Ordering::SeqCst);
    }
}

impl AuthBackend for Switch {
    fn authenticate(
        &self,
        user: &str,
        credentials: &Credentials,
    ) -> std::result::Result<AuthenticatedUser, AuthBackendError> {
        if *credentials == Credentials::password("letmein") {
            Ok(AuthenticatedUser { name: user.into(), tags: Vec::new() })
        } else {
            Err(AuthBackendError("no".into()))
        }
    }

    fn check_vhost_access(
        &self,
        _: &AuthenticatedUser,
        _: &str,
    ) -> std::result::Result<bool, AuthBackendError> {
        Ok(true)
    }

    fn check_resource_access(
        &self,
        _: &AuthenticatedUser,
        _: &str,
        _: &Resource,
        _: Permission,
    ) -> std::result::Result<bool, AuthBackendError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(AuthBackendError("policy service unreachable".into()));
        }
        Ok(!self.thrown.load(Ordering::SeqCst))
    }

    fn check_topic_access(
        &self,
        _: &AuthenticatedUser,
        _: &str,
        _: &str,
        routing_key: &str,
        _: Permission,
    ) -> std::result::Result<bool, AuthBackendError> {
        if routing_key == "boom" { Err(AuthBackendError("lookup failed".into())) } else { Ok(true) }
    }

    fn revision(&self) -> Option<u64> {
        self.cacheable.then(|| self.revision.load(Ordering::SeqCst))
    }
}

#[test]
fn a_custom_backend_that_denies_at_runtime_takes_effect_on_open_connections() -> Result {
    for cacheable in [true, false] {
        let switch = Switch::new(cacheable);
        let broker =
            Broker::with_options(BrokerOptions { auth_backend: Some(switch.clone()), ..Default::default() });
        let conn = broker.connect_with(ConnectOptions::new("/", "svc", Credentials::password("letmein")))?;
        assert!(
            broker.connect_with(ConnectOptions::new("/", "svc", Credentials::password("guess"))).is_err()
        );
        conn.declare_queue("jobs", QueueOptions::default())?;
        let publisher = conn.publisher("")?;
        for _ in 0..3 {
            conn.publish("", "jobs", Message::new("before"))?;
            publisher.publish("jobs", Message::new("before"))?;
        }
        switch.throw();
        assert!(matches!(
            conn.publish("", "jobs", Message::new("after")),
            Err(PublishError::NotPermitted { .. })
        ));
        assert!(matches!(
            publisher.publish("jobs", Message::new("after")),
            Err(PublishError::NotPermitted { .. })
        ));
        assert!(matches!(conn.get("jobs", true), Err(ConsumeError::NotPermitted(_))));
        assert_eq!(broker.queue_stats("jobs")?.messages_ready, 6);
    }
    Ok(())
}

#[test]
fn a_backend_that_cannot_decide_denies() -> Result {
    let switch = Switch::new(false);
    let broker =
        Broker::with_options(BrokerOptions { auth_backend: Some(switch.clone()), ..Default::default() });
    let conn = broker.connect();
    conn.declare_queue("jobs", QueueOptions::default())?;
    assert!(matches!(
        conn.publish("amq.topic", "boom", Message::new("m")),
        Err(PublishError::NotPermitted { .. })
    ));
    conn.publish("amq.topic", "fine", Message::new("m"))?;
    switch.failing.store(true, Ordering::SeqCst);
    assert!(matches!(conn.consume("jobs", ConsumeOptions::default()), Err(ConsumeError::NotPermitted(_))));
    Ok(())
}

#[test]
fn a_module_cannot_bypass_its_permissions_through_rpc_or_a_will() -> Result {
    let (broker, admin, user) = setup(&[(Permission::Write, x("x.orders"))]);
    topology_for_cases(&admin)?;
    let error = user.call("x.audit", "", Message::new("request"), Duration::from_secs(1)).unwrap_err();
    assert!(error.to_string().contains("ACCESS_REFUSED - write access to exchange 'x.audit'"), "{error}");
    assert!(user.set_will("x.audit", "", Message::new("will")).is_err());
    // A will set while allowed, then revoked, is refused when it would be published.
    broker.set_permissions(USER, VHOST, &permissions_for(&[(Permission::Write, x("amq.default"))]))?;
    user.set_will("", "q.billing", Message::new("will"))?;
    broker.clear_permissions(USER, VHOST)?;
    let before = broker.vhost(VHOST).unwrap().queue_stats("q.billing")?.messages_ready;
    drop(user);
    assert_eq!(broker.vhost(VHOST).unwrap().queue_stats("q.billing")?.messages_ready, before);
    Ok(())
}

#[test]
fn a_revocation_holds_for_every_publish_that_starts_after_it_returns() -> Result {
    // Publishers on several threads share one connection, each with
    // decisions cached; a publish that starts after `clear_permissions`
    // returned (as its thread can tell) must be refused, on every thread.
    let (broker, admin, user) = setup(&[(Permission::Write, x("x.audit"))]);
    topology_for_cases(&admin)?;
    let user = Arc::new(user);
    for round in 0..20_u64 {
        broker.set_permissions(USER, VHOST, &permissions_for(&[(Permission::Write, x("x.audit"))]))?;
        let revoked = Arc::new(AtomicBool::new(false));
        let warmed = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (user, revoked, warmed) = (Arc::clone(&user), Arc::clone(&revoked), Arc::clone(&warmed));
                std::thread::spawn(move || {
                    let mut after = 0;
                    while after < 50 {
                        let was_revoked = revoked.load(Ordering::SeqCst);
                        let result = user.publish("x.audit", "", Message::new("m"));
                        if result.is_ok() {
                            warmed.fetch_add(1, Ordering::SeqCst);
                        }
                        if was_revoked {
                            assert!(
                                matches!(result, Err(PublishError::NotPermitted { .. })),
                                "a publish after the revocation went through: {result:?}"
                            );
                            after += 1;
                        }
                    }
                })
            })
            .collect();
        // Every thread's cache holds the grant before it is revoked (more
        // of them each round, to vary where the revocation lands).
        while warmed.load(Ordering::SeqCst) < 4 * (1 + round) {
            std::thread::yield_now();
        }
        broker.clear_permissions(USER, VHOST)?;
        revoked.store(true, Ordering::SeqCst);
        for thread in threads {
            thread.join().map_err(|_| "a publisher saw a publish go through after the revocation")?;
        }
    }
    Ok(())
}
