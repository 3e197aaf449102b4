//! The OCI runtime spec (`config.json`) of a machine: process, user, environment,
//! namespaces, mounts and cgroup limits, built with `oci_spec::runtime` builders.
//!
//! Everything here is pure: the inputs are the image config, the machine config and a
//! few host facts, so the generated document is snapshot-tested without root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hangar_core::machine::Init;
use hangar_core::{MachineConfig, MachineId};
use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
    get_default_maskedpaths, get_default_readonly_paths,
};

use crate::ImageConfig;

/// The `PATH` a machine gets when neither the image nor the config sets one (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The CFS period used for CPU quotas, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The open-files limit of a machine's processes (lowered by [`host_nofile_limit`]
/// where the host cannot grant it).
pub const NOFILE_LIMIT: u64 = 1_048_576;

/// Why a machine's `config.json` could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Neither the machine config nor the image says what to run.
    #[error(
        "the machine has no command to run: the image sets neither ENTRYPOINT nor CMD; set init.cmd or init.exec in the machine config (fly.toml [processes] or `--entrypoint`/`--cmd`)"
    )]
    NoCommand,
    /// The image's `USER` names a user the rootfs does not have.
    #[error(
        "user {0:?} is not in the image's /etc/passwd: fix the image's USER or add the user to the image"
    )]
    UnknownUser(String),
    /// The image's `USER` names a group the rootfs does not have.
    #[error(
        "group {0:?} is not in the image's /etc/group: fix the image's USER or add the group to the image"
    )]
    UnknownGroup(String),
    /// The image's `USER` is not `uid`, `uid:gid`, `name` or `name:group`.
    #[error("invalid image USER {0:?}: expected uid, uid:gid, name or name:group")]
    InvalidUser(String),
    /// A numeric limit does not fit the OCI spec's integer types.
    #[error("the machine's {0} is too large for the container runtime: lower it")]
    LimitTooLarge(&'static str),
    /// The oci-spec builders rejected a value.
    #[error("building the OCI runtime spec failed: {0}")]
    Oci(#[from] OciSpecError),
}

/// The process's argv: Fly's `init.exec`, else entrypoint + cmd with Docker's rules
/// (overriding the entrypoint drops the image's cmd).
///
/// Empty override lists count as "not set", because Fly clients send `[]` for
/// fields the user left alone.
pub fn process_args(image: &ImageConfig, init: Option<&Init>) -> Result<Vec<String>, SpecError> {
    let set = |v: Option<&Vec<String>>| v.filter(|v| !v.is_empty()).cloned();
    let exec = set(init.and_then(|i| i.exec.as_ref()));
    if let Some(exec) = exec {
        return Ok(exec);
    }
    let entrypoint_override = set(init.and_then(|i| i.entrypoint.as_ref()));
    let cmd_override = set(init.and_then(|i| i.cmd.as_ref()));
    let overridden = entrypoint_override.is_some();
    let mut args = entrypoint_override.unwrap_or_else(|| image.entrypoint.clone());
    match cmd_override {
        Some(cmd) => args.extend(cmd),
        None if !overridden => args.extend(image.cmd.iter().cloned()),
        None => {}
    }
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(args)
}

/// Merges environments: image `ENV` < `config.env` < the platform's variables, keeping the
/// image's order for its keys, then adds `PATH`, `HOME` and `HOSTNAME` when absent.
pub fn merge_env(
    image_env: &[String],
    config_env: &BTreeMap<String, String>,
    platform_env: &BTreeMap<String, String>,
    home: &str,
    hostname: &str,
) -> Vec<String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match vars.iter_mut().find(|(key, _)| key == k) {
        Some(slot) => slot.1 = v.to_owned(),
        None => vars.push((k.to_owned(), v.to_owned())),
    };
    for entry in image_env {
        // An image ENV entry without `=` is a name with an empty value (Docker keeps it).
        let (k, v) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        if !k.is_empty() {
            set(k, v);
        }
    }
    for (k, v) in config_env.iter().chain(platform_env) {
        set(k, v);
    }
    let mut out: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let has = |k: &str| vars.iter().any(|(key, _)| key == k);
    if !has("PATH") {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has("HOME") {
        out.push(format!("HOME={home}"));
    }
    if !has("HOSTNAME") {
        out.push(format!("HOSTNAME={hostname}"));
    }
    out
}

/// The user the machine's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// Numeric user id.
    pub uid: u32,
    /// Numeric primary group id.
    pub gid: u32,
    /// Supplementary groups: the primary group, then those of `/etc/group` listing the user.
    pub additional_gids: Vec<u32>,
    /// The home directory from `/etc/passwd`, `/` when unknown (`/root` for root).
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 6 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_owned(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_owned(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves an image `USER` (`uid`, `uid:gid`, `name`, `name:group`) with the rootfs's
/// `/etc/passwd` and `/etc/group` texts (empty when the image has none).
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<ResolvedUser, SpecError> {
    let passwd = parse_passwd(passwd);
    let groups = parse_group(group);
    let user = user.trim();
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if user_part.is_empty() && group_part.is_some() {
        return Err(SpecError::InvalidUser(user.to_owned()));
    }
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|e| e.uid == uid),
        Err(_) => Some(
            passwd
                .iter()
                .find(|e| e.name == user_part)
                .ok_or_else(|| SpecError::UnknownUser(user_part.to_owned()))?,
        ),
    };
    let uid = match (user_part.parse::<u32>(), entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(e)) => e.uid,
        (Err(_), None) => return Err(SpecError::UnknownUser(user_part.to_owned())),
    };
    let gid = match group_part {
        Some("") => return Err(SpecError::InvalidUser(user.to_owned())),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                groups
                    .iter()
                    .find(|e| e.name == g)
                    .ok_or_else(|| SpecError::UnknownGroup(g.to_owned()))?
                    .gid
            }
        },
        // Docker's rule: a uid without a passwd entry runs with gid 0.
        None => entry.map_or(0, |e| e.gid),
    };
    // Like Docker, the primary group is also a supplementary group, followed by every
    // group that lists the user as a member.
    let mut members: Vec<u32> = match entry {
        Some(e) => groups
            .iter()
            .filter(|g| g.members.contains(&e.name) && g.gid != gid)
            .map(|g| g.gid)
            .collect(),
        None => Vec::new(),
    };
    members.sort_unstable();
    members.dedup();
    let mut additional_gids = vec![gid];
    additional_gids.extend(members);
    let home = match entry {
        Some(e) if !e.home.is_empty() => e.home.clone(),
        _ if uid == 0 => "/root".to_owned(),
        _ => "/".to_owned(),
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// The open-files limit runc can set here: [`NOFILE_LIMIT`], capped by the kernel's
/// `fs.nr_open` and, without `CAP_SYS_RESOURCE` (some sandboxes drop it even for root),
/// by our own hard limit, because raising a hard limit needs that capability.
pub fn host_nofile_limit() -> u64 {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(NOFILE_LIMIT);
    let mut limit = NOFILE_LIMIT.min(nr_open);
    if !has_effective_capability(CAP_SYS_RESOURCE) {
        let own = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(hard) = own.maximum {
            limit = limit.min(hard);
        }
    }
    limit
}

/// `CAP_SYS_RESOURCE`'s bit number.
const CAP_SYS_RESOURCE: u32 = 24;

fn has_effective_capability(bit: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1u64 << bit) != 0)
}

/// Everything `build_spec` needs besides the machine config.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    /// The machine; also its hostname.
    pub id: &'a MachineId,
    /// The overlay mount point (absolute).
    pub rootfs: &'a Path,
    /// The image's config.
    pub image: &'a ImageConfig,
    /// The machine's config.
    pub config: &'a MachineConfig,
    /// Variables set by the platform (`FLY_MACHINE_ID`, ...), highest precedence.
    pub platform_env: &'a BTreeMap<String, String>,
    /// The resolved user.
    pub user: &'a ResolvedUser,
    /// The network namespace to join; `None` gives the machine a fresh, empty one.
    pub netns: Option<&'a Path>,
    /// The cgroup parent, e.g. `hangar`: the machine's cgroup is `/<parent>/<id>`.
    pub cgroup_parent: &'a str,
    /// The pids limit.
    pub pids_limit: i64,
    /// Whether the kernel has cgroup namespaces.
    pub cgroup_namespace: bool,
    /// The open-files limit (soft and hard): [`NOFILE_LIMIT`] where the host allows it.
    pub nofile: u64,
}

/// The capabilities Docker grants by default.
const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::AuditWrite,
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Mknod,
    Capability::NetBindService,
    Capability::NetRaw,
    Capability::Setfcap,
    Capability::Setgid,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysChroot,
];

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ(typ)
        .source(PathBuf::from(source))
        .options(options.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .build()?)
}

fn default_mounts() -> Result<Vec<Mount>, SpecError> {
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ])
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace, SpecError> {
    let b = LinuxNamespaceBuilder::default().typ(typ);
    Ok(match path {
        Some(p) => b.path(p.to_path_buf()).build()?,
        None => b.build()?,
    })
}

/// Builds the runtime spec of one start of a machine.
pub fn build_spec(input: &SpecInput<'_>) -> Result<Spec, SpecError> {
    let args = process_args(input.image, input.config.init.as_ref())?;
    let hostname = input.id.as_str();
    let env = merge_env(
        &input.image.env,
        &input.config.env,
        input.platform_env,
        &input.user.home,
        hostname,
    );
    let cwd = if input.image.working_dir.is_empty() {
        "/".to_owned()
    } else {
        input.image.working_dir.clone()
    };
    let mut user = UserBuilder::default()
        .uid(input.user.uid)
        .gid(input.user.gid);
    if !input.user.additional_gids.is_empty() {
        user = user.additional_gids(input.user.additional_gids.clone());
    }
    let caps: oci_spec::runtime::Capabilities = DEFAULT_CAPABILITIES.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        // Like Docker: nothing inheritable or ambient, so a non-root user gets no
        // capabilities across exec.
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user.build()?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(true)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(input.nofile)
                .soft(input.nofile)
                .build()?,
        ])
        .build()?;

    let guest = input.config.guest.clone().unwrap_or_default();
    let memory_bytes = i64::try_from(guest.memory_mb)
        .ok()
        .and_then(|mb| mb.checked_mul(1024 * 1024))
        .ok_or(SpecError::LimitTooLarge("guest.memory_mb"))?;
    let cpu_quota = i64::from(guest.cpus.max(1))
        .checked_mul(CPU_PERIOD_US as i64)
        .ok_or(SpecError::LimitTooLarge("guest.cpus"))?;
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()?,
        ])
        .memory(
            LinuxMemoryBuilder::default()
                .limit(memory_bytes)
                // Memory+swap equal to memory: the machine gets no swap.
                .swap(memory_bytes)
                .build()?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .quota(cpu_quota)
                .period(CPU_PERIOD_US)
                .build()?,
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(input.pids_limit)
                .build()?,
        )
        .build()?;

    let mut namespaces = vec![
        namespace(LinuxNamespaceType::Pid, None)?,
        namespace(LinuxNamespaceType::Ipc, None)?,
        namespace(LinuxNamespaceType::Uts, None)?,
        namespace(LinuxNamespaceType::Mount, None)?,
        namespace(LinuxNamespaceType::Network, input.netns)?,
    ];
    if input.cgroup_namespace {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, None)?);
    }
    let linux = LinuxBuilder::default()
        .cgroups_path(PathBuf::from(format!(
            "/{}/{}",
            input.cgroup_parent.trim_matches('/'),
            input.id
        )))
        .resources(resources)
        .namespaces(namespaces)
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()?;

    Ok(SpecBuilder::default()
        .version("1.0.2")
        .hostname(hostname)
        .process(process)
        .root(
            RootBuilder::default()
                .path(input.rootfs.to_path_buf())
                .readonly(false)
                .build()?,
        )
        .mounts(default_mounts()?)
        .linux(linux)
        .build()?)
}

/// The spec as the JSON document written to `config.json`, with set-valued fields
/// (capabilities) sorted so the file is byte-for-byte reproducible.
pub fn spec_to_json(spec: &Spec) -> serde_json::Value {
    let mut value = serde_json::to_value(spec).unwrap_or(serde_json::Value::Null);
    if let Some(caps) = value
        .pointer_mut("/process/capabilities")
        .and_then(|c| c.as_object_mut())
    {
        for set in caps.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: entrypoint.iter().map(|s| (*s).to_owned()).collect(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            ..ImageConfig::default()
        }
    }

    fn v(items: &[&str]) -> Option<Vec<String>> {
        Some(items.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn argv_follows_fly_and_docker_rules() {
        struct Case {
            name: &'static str,
            image: ImageConfig,
            init: Option<Init>,
            want: Result<Vec<&'static str>, ()>,
        }
        let init = |exec: Option<Vec<String>>,
                    entrypoint: Option<Vec<String>>,
                    cmd: Option<Vec<String>>| {
            Some(Init {
                exec,
                entrypoint,
                cmd,
                ..Init::default()
            })
        };
        let cases = vec![
            Case {
                name: "image entrypoint + cmd",
                image: img(&["/ep"], &["a", "b"]),
                init: None,
                want: Ok(vec!["/ep", "a", "b"]),
            },
            Case {
                name: "image cmd only",
                image: img(&[], &["/bin/app", "-x"]),
                init: None,
                want: Ok(vec!["/bin/app", "-x"]),
            },
            Case {
                name: "cmd override keeps the image entrypoint",
                image: img(&["/ep"], &["a"]),
                init: init(None, None, v(&["z"])),
                want: Ok(vec!["/ep", "z"]),
            },
            Case {
                name: "entrypoint override drops the image cmd",
                image: img(&["/ep"], &["a"]),
                init: init(None, v(&["/other"]), None),
                want: Ok(vec!["/other"]),
            },
            Case {
                name: "entrypoint and cmd override",
                image: img(&["/ep"], &["a"]),
                init: init(None, v(&["/other"]), v(&["x", "y"])),
                want: Ok(vec!["/other", "x", "y"]),
            },
            Case {
                name: "exec replaces everything",
                image: img(&["/ep"], &["a"]),
                init: init(v(&["/bin/sh", "-c", "true"]), v(&["/other"]), v(&["x"])),
                want: Ok(vec!["/bin/sh", "-c", "true"]),
            },
            Case {
                name: "empty lists count as unset",
                image: img(&["/ep"], &["a"]),
                init: init(v(&[]), v(&[]), v(&[])),
                want: Ok(vec!["/ep", "a"]),
            },
            Case {
                name: "nothing to run",
                image: img(&[], &[]),
                init: None,
                want: Err(()),
            },
            Case {
                name: "nothing to run even with an empty init",
                image: img(&[], &[]),
                init: Some(Init::default()),
                want: Err(()),
            },
        ];
        for case in cases {
            let got = process_args(&case.image, case.init.as_ref());
            match (&got, &case.want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{}", case.name),
                (Err(SpecError::NoCommand), Err(())) => {}
                _ => panic!("{}: got {got:?}, want {:?}", case.name, case.want),
            }
        }
    }

    #[test]
    fn env_precedence_and_defaults() {
        let image = vec![
            "PATH=/image/bin".to_owned(),
            "A=image".to_owned(),
            "B=image".to_owned(),
            "EMPTY".to_owned(),
        ];
        let config: BTreeMap<String, String> = [("B", "config"), ("C", "config")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let platform: BTreeMap<String, String> = [("C", "platform"), ("FLY_MACHINE_ID", "m")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let env = merge_env(&image, &config, &platform, "/root", "abc");
        assert_eq!(
            env,
            vec![
                "PATH=/image/bin",
                "A=image",
                "B=config",
                "EMPTY=",
                "C=platform",
                "FLY_MACHINE_ID=m",
                "HOME=/root",
                "HOSTNAME=abc",
            ]
        );
        let env = merge_env(&[], &BTreeMap::new(), &BTreeMap::new(), "/", "h");
        assert_eq!(env[0], format!("PATH={DEFAULT_PATH}"));
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:www:/var/www:/bin/false\nnobody:x:65534:65534::/nonexistent:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwww:x:34:\nadm:x:4:www,root\nstaff:x:50:www\n";

    #[test]
    fn users_resolve_like_docker() {
        let check = |user: &str| resolve_user(user, PASSWD, GROUP);
        let u = check("").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        assert_eq!(u.additional_gids, vec![0, 4]);
        let u = check("www").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (33, 34, "/var/www"));
        assert_eq!(u.additional_gids, vec![34, 4, 50]);
        let u = check("www:staff").unwrap();
        assert_eq!((u.uid, u.gid), (33, 50));
        let u = check("1234").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1234, 0, "/"));
        let u = check("1234:99").unwrap();
        assert_eq!((u.uid, u.gid), (1234, 99));
        let u = check("33").unwrap();
        assert_eq!((u.uid, u.gid), (33, 34));
        assert!(matches!(check("ghost"), Err(SpecError::UnknownUser(n)) if n == "ghost"));
        assert!(matches!(check("www:ghosts"), Err(SpecError::UnknownGroup(n)) if n == "ghosts"));
        assert!(matches!(check(":5"), Err(SpecError::InvalidUser(_))));
        assert!(matches!(check("www:"), Err(SpecError::InvalidUser(_))));
        // An image without /etc/passwd still runs numeric users.
        let u = resolve_user("1000:1000", "", "").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
    }

    fn snapshot_input(
        config: &MachineConfig,
        image: &ImageConfig,
        netns: Option<&Path>,
        user: &ResolvedUser,
        platform: &BTreeMap<String, String>,
    ) -> serde_json::Value {
        let id: MachineId = "0123456789abcd".parse().unwrap();
        let input = SpecInput {
            id: &id,
            rootfs: Path::new("/var/lib/hangar/machines/0123456789abcd/rootfs"),
            image,
            config,
            platform_env: platform,
            user,
            netns,
            cgroup_parent: "hangar",
            pids_limit: 4096,
            cgroup_namespace: true,
            nofile: NOFILE_LIMIT,
        };
        spec_to_json(&build_spec(&input).unwrap())
    }

    #[test]
    fn config_json_for_a_plain_image() {
        let image = ImageConfig {
            cmd: vec!["httpd".into(), "-f".into(), "-p".into(), "8080".into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            ..ImageConfig::default()
        };
        let user = resolve_user("", "", "").unwrap();
        let json = snapshot_input(
            &MachineConfig::default(),
            &image,
            None,
            &user,
            &BTreeMap::new(),
        );
        insta::assert_json_snapshot!("config_plain_image", json);
    }

    #[test]
    fn config_json_with_overrides_limits_and_netns() {
        let image = ImageConfig {
            entrypoint: vec!["/docker-entrypoint.sh".into()],
            cmd: vec!["nginx".into()],
            env: vec!["A=1".into()],
            working_dir: "/srv".into(),
            user: "www".into(),
            ..ImageConfig::default()
        };
        let config: MachineConfig = serde_json::from_value(serde_json::json!({
            "image": "web:1",
            "env": {"A": "2", "B": "3"},
            "init": {"entrypoint": ["/bin/sh", "-c"], "cmd": ["exec httpd -f"]},
            "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512},
        }))
        .unwrap();
        let user = resolve_user("www", PASSWD, GROUP).unwrap();
        let platform: BTreeMap<String, String> = [
            ("FLY_MACHINE_ID", "0123456789abcd"),
            ("FLY_APP_NAME", "web"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let json = snapshot_input(
            &config,
            &image,
            Some(Path::new("/run/netns/hangar-0123456789abcd")),
            &user,
            &platform,
        );
        insta::assert_json_snapshot!("config_overrides_limits_netns", json);
    }
}
