//! A randomized fault campaign (Jepsen-style) against the real `cleave serve`.
//!
//! Two 32 MiB volumes, 3-of-5 on the server's five directory targets: `vl` (durability
//! `local`) and `vd` (`dispersed`). One libnbd client per volume
//! (`campaign_client.py`, sequential: one request in flight) writes 4 KiB blocks whose
//! bytes derive from (block, version), FLUSHes now and then, and reads back what it wrote.
//! Meanwhile a controller driven by a seeded generator injects faults:
//!
//! - `kill`: SIGKILL the gateway and restart it; `kill+drop-cache`: also delete `vd`'s
//!   cache files before the restart (only `vd`: a `local` volume's FLUSH promises the cache);
//! - `down` / `up`: a target's folder is moved away and a file put in its place, later back;
//! - `flip` / `truncate`: one byte of a share file under `<target>/<uuid>/d/` flipped,
//!   or the file cut short (in place, never creating a file);
//! - `replace`: with the gateway stopped, a target's folder is deleted and an empty one
//!   created; the gateway rebuilds it by itself (a `rereplicate` task), and the controller
//!   waits for both volumes to be `clean` before it replaces another;
//! - `scrub --repair` now and then (not a fault: it clears the damaged set).
//!
//! Budget: a target is *faulty* while it is down, holds a damaged share not yet repaired,
//! was replaced and not yet rebuilt, or is named by the volume's health as lacking shares
//! (`missing`, or journal copies: `journal_degraded`) after it came back. At most N−M = 2
//! targets are faulty at any time, so every chunk and journal record stays readable.
//!
//! What is asserted, per 4 KiB block (the model in [`Vol`]):
//!
//! - *durable*: the last write acknowledged before an acknowledged FLUSH (the client
//!   never overlaps requests, so the FLUSH covers exactly those);
//! - *maybe*: writes issued after it (acknowledged or not, or failed with an error):
//!   each may or may not have landed;
//! - after every restart, the whole of both images is read (nbdcopy) while the faults of
//!   the moment are still in place: each block must be exactly the durable version or one
//!   of the maybes, never zeros unless nothing durable was there, never a mix or garbage.
//!   Then a FLUSH is sent and, once acknowledged, the block's durable version becomes what
//!   was read (the image may not change again across later crashes);
//! - during a session, the client reads back blocks it wrote and acknowledged: they must
//!   be exactly its latest write (read-your-writes, with faults);
//! - at the end (clients stopped after a last acknowledged FLUSH, targets restored, damage
//!   repaired, both volumes `clean`, a scrub finds no problem), every block holds its
//!   durable version (or a write that failed with an error, if any did: none has), and an
//!   offline `cleave recover` from 3 random targets of 5 gives the same bytes.
//!
//! Blocks are checked one by one: a write of several blocks cut short by a crash may
//! leave some blocks new and others old, which is what a disk may do too.
//!
//! A failure names the block, the write (offset, version, when issued, acknowledged and
//! flushed) and the fault history around it. The fault schedule is reproducible from the
//! seed; the interleaving with the clients is not (it depends on timing).
//!
//! Size: `CLEAVE_CAMPAIGN_FAULTS` (default 1000) faults or `CLEAVE_CAMPAIGN_SECS` (default
//! 300) seconds of injection, whichever comes first; `CLEAVE_CAMPAIGN_SEED` (default
//! 0xC1EA7E); `CLEAVE_CAMPAIGN_REPLACES` (default one per 250 faults, at least 2). For a long local run: `CLEAVE_CAMPAIGN_FAULTS=20000 CLEAVE_CAMPAIGN_SECS=3600
//! CLEAVE_CAMPAIGN_SEED=$RANDOM cargo test --release -p cleave --test campaign -- --nocapture`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use common::*;

const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;
const VOL_SIZE: u64 = 32 * MIB;
const BLOCKS: usize = (VOL_SIZE / BLOCK) as usize;
const N: usize = 5;
const M: usize = 3;
const CLIENT: &str = include_str!("campaign_client.py");

fn splitmix(x: u64) -> u64 {
    let mut x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The seeded generator of the fault schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix(self.0.wrapping_mul(0x2545_F491_4F6C_DD1D))
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Block `b` of write `version` on volume `tag`, exactly as `campaign_client.py` writes it.
fn block_bytes(tag: u64, b: u64, version: u64) -> Vec<u8> {
    let seed = b.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(version.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut unit = Vec::with_capacity(32);
    for j in 0..4 {
        unit.extend_from_slice(&splitmix(seed.wrapping_add(j)).to_le_bytes());
    }
    let mut out = Vec::with_capacity(BLOCK as usize);
    out.extend_from_slice(b"CLVCAMP1");
    for w in [tag, b, version] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    for _ in 0..127 {
        out.extend_from_slice(&unit);
    }
    out
}

/// What one block of an image holds.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Zero,
    Version(u64),
    Garbage(String),
}

fn decode(tag: u64, b: u64, bytes: &[u8]) -> Seen {
    if bytes.iter().all(|&x| x == 0) {
        return Seen::Zero;
    }
    let word = |i: usize| u64::from_le_bytes(bytes[8 + 8 * i..16 + 8 * i].try_into().unwrap());
    if &bytes[..8] != b"CLVCAMP1" || word(0) != tag || word(1) != b {
        return Seen::Garbage(format!("header {}", hex(&bytes[..32])));
    }
    let version = word(2);
    if bytes != block_bytes(tag, b, version) {
        let at = bytes.iter().zip(block_bytes(tag, b, version)).position(|(x, y)| *x != y).unwrap();
        return Seen::Garbage(format!("version {version:#x} torn or damaged from byte {at}"));
    }
    Seen::Version(version)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Debug)]
struct WriteInfo {
    vol: usize,
    offset: u64,
    len: u64,
    issued: f64,
    acked: Option<f64>,
    failed: bool,
    flushed: Option<f64>,
}

struct Client {
    child: Child,
    exited: bool,
    done: bool,
}

/// One volume and its model.
struct Vol {
    name: &'static str,
    tag: u64,
    dispersed: bool,
    uuid: String,
    /// Per block: the version known durable (0: zeros, never written).
    durable: Vec<u64>,
    /// Per block, in issue order: writes since then that may or may not be there.
    maybe: Vec<Vec<u64>>,
    client: Option<Client>,
    stop_file: PathBuf,
    scratch: PathBuf,
}

#[derive(Default)]
struct Counters {
    faults: BTreeMap<&'static str, u64>,
    repairs: u64,
    writes: u64,
    writes_acked: u64,
    write_errors: u64,
    flushes: u64,
    flush_errors: u64,
    readbacks: u64,
    bytes_verified: u64,
    sessions: u64,
    restarts_verified: u64,
}

struct Campaign {
    seed: u64,
    rng: Rng,
    dir: PathBuf,
    s: Serve,
    vols: Vec<Vol>,
    writes: HashMap<u64, WriteInfo>,
    history: Vec<(f64, String)>,
    t0: Instant,
    tx: Sender<(usize, Option<String>)>,
    rx: Receiver<(usize, Option<String>)>,
    script: PathBuf,
    down: BTreeMap<usize, Instant>,
    down_for: BTreeMap<usize, Duration>,
    damaged: BTreeSet<usize>,
    unhealed: BTreeSet<usize>,
    replaced: Option<(usize, Instant)>,
    last_health: Instant,
    session: u64,
    killing: bool,
    budget: u64,
    planned_replaces: u64,
    want_replace: bool,
    want_replace_since: Option<Instant>,
    n: Counters,
}

impl Campaign {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn log(&mut self, what: String) {
        let t = self.now();
        if std::env::var_os("CLEAVE_CAMPAIGN_VERBOSE").is_some() {
            eprintln!("[{t:8.3}] {what}");
        }
        self.history.push((t, what));
    }

    fn fault(&mut self, kind: &'static str, what: String) {
        *self.n.faults.entry(kind).or_default() += 1;
        self.log(format!("{kind}: {what}"));
    }

    fn total_faults(&self) -> u64 {
        self.n.faults.values().sum()
    }

    /// Targets that count against the N−M budget.
    fn faulty(&self) -> BTreeSet<usize> {
        let mut f: BTreeSet<usize> = self.down.keys().copied().collect();
        f.extend(&self.damaged);
        f.extend(&self.unhealed);
        f.extend(self.replaced.map(|r| r.0));
        f
    }

    /// Targets a new fault may hit without exceeding N−M faulty ones.
    fn may_fault(&self) -> Vec<usize> {
        let f = self.faulty();
        if f.len() < N - M {
            (0..N).collect()
        } else {
            f.into_iter().collect()
        }
    }

    fn history_between(&self, from: f64, to: f64) -> String {
        let lines: Vec<String> = self
            .history
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(t, w)| format!("    [{t:8.3}] {w}"))
            .collect();
        if lines.is_empty() {
            "    (nothing)".into()
        } else {
            lines.join("\n")
        }
    }

    fn fail(&self, what: &str) -> ! {
        let from = (self.now() - 30.0).max(0.0);
        panic!(
            "fault campaign failed (seed {}; replay with CLEAVE_CAMPAIGN_SEED={}): {what}\nlast 30 s of faults:\n{}\ndata dir: {}",
            self.seed,
            self.seed,
            self.history_between(from, f64::MAX),
            self.s.data.display()
        );
    }

    fn describe_write(&self, version: u64) -> String {
        match self.writes.get(&version) {
            None => format!("version {version:#x} (unknown to the model)"),
            Some(w) => format!(
                "write {version:#x} on {} ({} bytes at offset {}): issued at {:.3} s, {}, {}\n  faults around it:\n{}",
                self.vols[w.vol].name,
                w.len,
                w.offset,
                w.issued,
                match (w.acked, w.failed) {
                    (Some(t), _) => format!("acknowledged at {t:.3} s"),
                    (None, true) => "failed with an error".into(),
                    (None, false) => "never acknowledged".into(),
                },
                match w.flushed {
                    Some(t) => format!("covered by a FLUSH acknowledged at {t:.3} s"),
                    None => "not covered by an acknowledged FLUSH".into(),
                },
                self.history_between(w.issued - 10.0, w.flushed.unwrap_or(w.issued) + 10.0)
            ),
        }
    }

    // ---- clients ----

    fn start_clients(&mut self) {
        for i in 0..self.vols.len() {
            self.session += 1;
            self.n.sessions += 1;
            let base = self.session << 32;
            let seed = self.rng.next() >> 1;
            let v = &self.vols[i];
            let mut child = Command::new("/usr/bin/python3")
                .arg(&self.script)
                .arg(self.s.uri(v.name))
                .arg(v.tag.to_string())
                .arg(VOL_SIZE.to_string())
                .arg(seed.to_string())
                .arg(base.to_string())
                .arg(&v.stop_file)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("python3 with libnbd (python3-libnbd)");
            let out = child.stdout.take().unwrap();
            let tx = self.tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((i, Some(line))).is_err() {
                        return;
                    }
                }
                let _ = tx.send((i, None));
            });
            self.vols[i].client = Some(Client { child, exited: false, done: false });
            let name = self.vols[i].name;
            self.log(format!("client session {base:#x} on {name}"));
        }
    }

    fn event(&mut self, i: usize, line: Option<String>) {
        let t = self.now();
        let Some(line) = line else {
            let c = self.vols[i].client.as_mut().unwrap();
            let status = c.child.wait().unwrap();
            c.exited = true;
            let done = c.done;
            if !done && !self.killing {
                self.fail(&format!("the client of {} exited ({status}) while the gateway was up", self.vols[i].name));
            }
            return;
        };
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |k: usize| -> u64 { w.get(k).and_then(|x| x.parse().ok()).unwrap_or(0) };
        match w.first().copied().unwrap_or("") {
            "W" => {
                let (version, offset, len) = (num(1), num(2), num(3));
                self.n.writes += 1;
                self.writes.insert(
                    version,
                    WriteInfo { vol: i, offset, len, issued: t, acked: None, failed: false, flushed: None },
                );
                for b in offset / BLOCK..(offset + len) / BLOCK {
                    self.vols[i].maybe[b as usize].push(version);
                }
            }
            "A" => {
                self.n.writes_acked += 1;
                self.writes.get_mut(&num(1)).unwrap().acked = Some(t);
            }
            "WE" => {
                self.n.write_errors += 1;
                self.writes.get_mut(&num(1)).unwrap().failed = true;
                let name = self.vols[i].name;
                self.log(format!("{name}: write {:#x} failed: {}", num(1), w[2..].join(" ")));
            }
            "F" => self.n.flushes += 1,
            "FA" => self.flush_acked(i, t),
            "FE" => {
                self.n.flush_errors += 1;
                let name = self.vols[i].name;
                self.log(format!("{name}: FLUSH failed: {}", w[1..].join(" ")));
            }
            "R" => {
                self.n.readbacks += 1;
                self.n.bytes_verified += num(2);
            }
            "X" => {
                let name = self.vols[i].name;
                self.fail(&format!("{name}: the client read back something else than it wrote: {line}"))
            }
            "E" => {
                if !self.killing {
                    let name = self.vols[i].name;
                    self.fail(&format!("{name}: the client lost its connection while the gateway was up: {line}"));
                }
            }
            "DONE" => self.vols[i].client.as_mut().unwrap().done = true,
            _ => self.fail(&format!("unexpected client output: {line}")),
        }
    }

    /// A FLUSH was acknowledged: the last acknowledged write of each block is durable.
    fn flush_acked(&mut self, i: usize, t: f64) {
        let vol = &mut self.vols[i];
        for b in 0..BLOCKS {
            if vol.maybe[b].is_empty() {
                continue;
            }
            let mut rest = Vec::new();
            for &v in &vol.maybe[b] {
                let w = self.writes.get_mut(&v).unwrap();
                if w.acked.is_some() {
                    w.flushed.get_or_insert(t);
                    vol.durable[b] = v;
                    rest.clear();
                } else {
                    rest.push(v);
                }
            }
            vol.maybe[b] = rest;
        }
    }

    /// Waits `d`, handling client events meanwhile.
    fn pause(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((i, line)) => self.event(i, line),
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => unreachable!(),
            }
        }
    }

    fn wait_clients_exit(&mut self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.vols.iter().any(|v| v.client.as_ref().is_some_and(|c| !c.exited)) {
            if Instant::now() > deadline {
                self.fail(&format!("clients did not exit ({what}) within {timeout:?}"));
            }
            self.pause(Duration::from_millis(100));
        }
        for v in &mut self.vols {
            v.client = None;
        }
    }

    // ---- the gateway ----

    fn kill_restart(&mut self, drop_cache: bool, replace: Option<usize>) {
        self.killing = true;
        self.s.kill9();
        self.wait_clients_exit("after SIGKILL", Duration::from_secs(60));
        self.killing = false;
        if drop_cache {
            let uuid = self.vols.iter().find(|v| v.dispersed).unwrap().uuid.clone();
            for f in files_under(&self.s.data.join("cache")) {
                if f.file_name().unwrap().to_string_lossy().starts_with(&uuid) {
                    std::fs::remove_file(f).unwrap();
                }
            }
            self.fault("kill+drop-cache", format!("SIGKILL, {uuid}'s cache (vd) deleted, restart"));
        } else if let Some(t) = replace {
            let d = self.s.target_dir(t);
            let old = d.with_extension(format!("replaced{}", self.n.faults.get("replace").copied().unwrap_or(0)));
            std::fs::rename(&d, &old).unwrap();
            std::fs::remove_dir_all(&old).unwrap();
            std::fs::create_dir(&d).unwrap();
            self.replaced = Some((t, Instant::now()));
            self.fault("replace", format!("SIGKILL, target t{t} replaced by an empty folder, restart"));
        } else {
            self.fault("kill", "SIGKILL, restart".into());
        }
        let started = Instant::now();
        self.s.restart();
        self.log(format!("gateway up again after {:.1} s", started.elapsed().as_secs_f64()));
        self.verify_and_collapse("after restart");
        self.start_clients();
    }

    fn nbdcopy(&self, vol: usize) -> Result<Vec<u8>, String> {
        let v = &self.vols[vol];
        let out = v.scratch.join("copy.img");
        let _ = std::fs::remove_file(&out);
        let o = Command::new("nbdcopy").arg(self.s.uri(v.name)).arg(&out).output().unwrap();
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        Ok(std::fs::read(&out).unwrap())
    }

    fn flush(&self, vol: usize) -> Result<(), String> {
        let o = Command::new("qemu-io")
            .args(["-f", "raw", "-c", "flush"])
            .arg(self.s.uri(self.vols[vol].name))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        if !o.status.success() || text.to_lowercase().contains("error") {
            return Err(text);
        }
        Ok(())
    }

    /// Reads both images whole and checks every block against the model; then FLUSHes
    /// and makes what was read the durable state.
    fn verify_and_collapse(&mut self, what: &str) -> Vec<Vec<u8>> {
        let mut images = Vec::new();
        for i in 0..self.vols.len() {
            let image = match self.nbdcopy(i) {
                Ok(img) => img,
                Err(e) => self.fail(&format!("{what}: reading {} failed: {e}", self.vols[i].name)),
            };
            assert_eq!(image.len() as u64, VOL_SIZE);
            self.n.bytes_verified += VOL_SIZE;
            let mut seen = vec![0u64; BLOCKS];
            let mut problems = Vec::new();
            let v = &self.vols[i];
            for (b, slot) in seen.iter_mut().enumerate() {
                let got = decode(v.tag, b as u64, &image[b * BLOCK as usize..(b + 1) * BLOCK as usize]);
                let ok = match &got {
                    Seen::Zero => v.durable[b] == 0,
                    Seen::Version(x) => *x == v.durable[b] || v.maybe[b].contains(x),
                    Seen::Garbage(_) => false,
                };
                if ok {
                    *slot = match got {
                        Seen::Version(x) => x,
                        _ => 0,
                    };
                } else if problems.len() < 8 {
                    problems.push((b, got));
                }
            }
            if !problems.is_empty() {
                let mut text = format!("{what}: {} holds what no acknowledged history allows:\n", v.name);
                for (b, got) in &problems {
                    text += &format!(
                        "- block {b} (offset {}): got {got:?}; durable {:#x}, maybe {:x?}\n",
                        *b as u64 * BLOCK,
                        v.durable[*b],
                        v.maybe[*b]
                    );
                }
                let (b, got) = &problems[0];
                text += &format!("durable write: {}\n", self.describe_write(v.durable[*b]));
                if let Seen::Version(x) = got {
                    text += &format!("write read back: {}\n", self.describe_write(*x));
                }
                self.fail(&text);
            }
            images.push((i, seen, image));
        }
        self.n.restarts_verified += 1;
        // A dispersed FLUSH needs the write quorum (4 of 5): at most one target down.
        while self.down.len() > 1 {
            let t = *self.down.keys().next().unwrap();
            self.target_up(t);
        }
        let mut out = Vec::new();
        for (i, seen, image) in images {
            if let Err(e) = self.flush(i) {
                self.fail(&format!("{what}: FLUSH of {} failed: {e}", self.vols[i].name));
            }
            let v = &mut self.vols[i];
            v.durable = seen;
            for m in &mut v.maybe {
                m.clear();
            }
            out.push(image);
        }
        out
    }

    // ---- targets ----

    fn target_down(&mut self, t: usize) {
        let d = self.s.target_dir(t);
        std::fs::rename(&d, d.with_extension("away")).unwrap();
        std::fs::write(&d, b"not a directory").unwrap();
        let for_ = Duration::from_millis(200 + self.rng.below(2800));
        self.down.insert(t, Instant::now());
        self.down_for.insert(t, for_);
        self.fault("down", format!("target t{t} down for {} ms", for_.as_millis()));
    }

    fn target_up(&mut self, t: usize) {
        let d = self.s.target_dir(t);
        std::fs::remove_file(&d).unwrap();
        std::fs::rename(d.with_extension("away"), &d).unwrap();
        self.down.remove(&t);
        self.unhealed.insert(t);
        self.log(format!("up: target t{t} back"));
    }

    fn damage(&mut self, t: usize) {
        let vol = self.rng.below(self.vols.len() as u64) as usize;
        let dir = self.s.target_dir(t).join(&self.vols[vol].uuid).join("d");
        let shares: Vec<PathBuf> = files_under(&dir)
            .into_iter()
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with(".tmp-"))
            .collect();
        if shares.is_empty() {
            return;
        }
        let path = shares[self.rng.below(shares.len() as u64) as usize].clone();
        let truncate = self.rng.unit() < 0.3;
        let r = self.rng.next();
        // In place: a share deleted meanwhile (an older generation) is not created again.
        let Ok(mut f) = std::fs::OpenOptions::new().read(true).write(true).open(&path) else { return };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            return;
        }
        let rel = path.strip_prefix(&self.s.data).unwrap().display().to_string();
        // Damage is counted before it happens: a reader may see it at once.
        self.damaged.insert(t);
        if truncate {
            let to = r % len;
            f.set_len(to).unwrap();
            self.fault("truncate", format!("{rel} cut from {len} to {to} bytes"));
        } else {
            let at = r % len;
            let mut byte = [0u8];
            f.seek(SeekFrom::Start(at)).unwrap();
            f.read_exact(&mut byte).unwrap();
            byte[0] ^= 1 + (r >> 32) as u8 % 255;
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&byte).unwrap();
            self.fault("flip", format!("{rel} byte {at} of {len} flipped"));
        }
    }

    /// `scrub --repair` on both volumes: damaged shares rewritten.
    fn repair(&mut self) {
        for i in 0..self.vols.len() {
            let name = self.vols[i].name;
            let out = self.s.cli(&["scrub", name, "--repair", "--json"]);
            // Exit status 3: problems left (a chunk still dirty or not yet committed keeps
            // its damage until its next destage); anything else but 0 is a failure.
            if !matches!(out.status.code(), Some(0 | 3)) {
                self.fail(&format!("scrub --repair {name} failed: {}", String::from_utf8_lossy(&out.stderr)));
            }
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            self.log(format!(
                "repair {name}: {} problems, {} chunks repaired",
                report["problems"].as_array().map_or(0, |p| p.len()),
                report["chunks_repaired"]
            ));
        }
        self.n.repairs += 1;
        // A target stays damaged while a scrub still finds a bad share there: a chunk
        // that was dirty, or not yet committed when the repair looked, keeps its damage
        // until its next destage writes a new generation.
        let mut still = BTreeSet::new();
        for i in 0..self.vols.len() {
            let out = self.s.cli(&["scrub", self.vols[i].name, "--json"]);
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            for p in report["problems"].as_array().into_iter().flatten() {
                still.extend(p["share"].as_u64().map(|x| x as usize));
            }
        }
        let before = std::mem::take(&mut self.damaged);
        self.damaged = before.intersection(&still).copied().collect();
        self.log(format!("repaired: damaged targets {before:?} -> {:?}", self.damaged));
    }

    /// Reads both volumes' health; clears what has healed. True if both are clean.
    fn poll_health(&mut self) -> bool {
        self.last_health = Instant::now();
        let mut lacking = BTreeSet::new();
        let mut journal = false;
        let mut clean = true;
        for v in &self.vols {
            let h = self.s.api(&format!("/volumes/{}", v.name))["health"].clone();
            if h["state"] == "clean" {
                continue;
            }
            clean = false;
            journal |= h["journal_degraded"].as_bool().unwrap_or(false);
            for m in h["missing"].as_array().into_iter().flatten() {
                lacking.extend(m[1].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize));
            }
            for d in h["targets_down"].as_array().into_iter().flatten() {
                let d = d.as_str().unwrap();
                lacking.extend((0..N).filter(|i| d.ends_with(&format!("/t{i}"))));
            }
        }
        if clean {
            if let Some((t, since)) = self.replaced.take() {
                self.log(format!("replaced target t{t} rebuilt after {:.1} s", since.elapsed().as_secs_f64()));
            }
            self.unhealed.clear();
        } else {
            // A target the gateway names as lacking shares counts as faulty, whatever the
            // controller did; one it no longer names has healed (unless journal copies are
            // still missing somewhere: the health does not say where).
            let before = self.unhealed.clone();
            if !journal {
                self.unhealed.retain(|t| lacking.contains(t));
            }
            self.unhealed.extend(lacking.iter().filter(|t| !self.down.contains_key(t)));
            for t in before.difference(&self.unhealed) {
                self.history.push((self.t0.elapsed().as_secs_f64(), format!("healed: target t{t}")));
            }
        }
        clean
    }

    fn wait_clean(&mut self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.poll_health() {
            if Instant::now() > deadline {
                let h: Vec<String> = self
                    .vols
                    .iter()
                    .map(|v| format!("{}: {}", v.name, self.s.api(&format!("/volumes/{}", v.name))["health"]))
                    .collect();
                self.fail(&format!("{what}: the volumes did not become clean within {timeout:?}: {h:?}"));
            }
            self.pause(Duration::from_millis(500));
        }
    }

    // ---- the controller ----

    fn step(&mut self) {
        // Targets down long enough come back.
        let due: Vec<usize> =
            self.down.iter().filter(|(t, since)| since.elapsed() >= self.down_for[t]).map(|(t, _)| *t).collect();
        for t in due {
            self.target_up(t);
        }
        if (!self.unhealed.is_empty() || self.replaced.is_some())
            && self.last_health.elapsed() > Duration::from_millis(700)
        {
            self.poll_health();
        }
        if let Some((t, since)) = self.replaced {
            // While a replaced target is rebuilt nothing is taken down (the rebuild needs
            // every target up), and it must finish.
            for d in self.down.keys().copied().collect::<Vec<_>>() {
                self.target_up(d);
            }
            if since.elapsed() > Duration::from_secs(240) {
                self.fail(&format!("the rebuild of replaced target t{t} did not finish within 240 s"));
            }
        }
        // Replaces are spread over the campaign; before one, the other faults stop and heal.
        if self.replaced.is_none() && self.n.faults.get("replace").copied().unwrap_or(0) < self.planned_replaces {
            let k = self.n.faults.get("replace").copied().unwrap_or(0) + 1;
            self.want_replace |= self.total_faults() * (self.planned_replaces + 1) >= k * self.budget;
        }
        if self.want_replace {
            for d in self.down.keys().copied().collect::<Vec<_>>() {
                self.target_up(d);
            }
            if !self.damaged.is_empty() {
                self.repair();
            }
            let candidates: Vec<usize> = (0..N).filter(|t| !self.faulty().contains(t)).collect();
            if self.faulty().len() < N - M && !candidates.is_empty() {
                self.want_replace = false;
                let t = self.rng.pick(&candidates);
                self.kill_restart(false, Some(t));
            } else if self.want_replace_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(240) {
                self.fail("the targets did not heal within 240 s (waiting to replace one)");
            }
            self.pause(Duration::from_millis(200));
            return;
        }
        self.want_replace_since = None;
        let r = self.rng.unit();
        let allowed = self.may_fault();
        let before = self.total_faults();
        // Kills are about 4% of the faults (each costs a restart and two whole-image reads).
        let kills = self.n.faults.get("kill").copied().unwrap_or(0)
            + self.n.faults.get("kill+drop-cache").copied().unwrap_or(0);
        if r < 0.04 && kills * 25 <= before {
            let drop = self.rng.unit() < 0.35;
            self.kill_restart(drop, None);
        } else if r < 0.40 {
            let candidates: Vec<usize> = allowed.iter().copied().filter(|t| !self.down.contains_key(t)).collect();
            if self.replaced.is_none() && !candidates.is_empty() {
                let t = self.rng.pick(&candidates);
                self.target_down(t);
            }
        } else if r < 0.985 {
            let candidates: Vec<usize> = allowed.iter().copied().filter(|t| !self.down.contains_key(t)).collect();
            if !candidates.is_empty() {
                let t = self.rng.pick(&candidates);
                self.damage(t);
            }
        } else if !self.damaged.is_empty() && self.down.is_empty() && self.n.repairs * 40 <= before {
            // About one repair per 40 faults: each scrubs both volumes twice.
            self.repair();
        }
        // The clients work between faults; a step that found nothing to do waits less.
        let ms = if self.total_faults() > before { 5 + self.rng.below(55) } else { 15 };
        self.pause(Duration::from_millis(ms));
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        }
        Err(_) => default,
    }
}

fn recover(data: &Path, targets: &[PathBuf], volume: &str, out: &Path) -> Result<Vec<u8>, String> {
    let _ = std::fs::remove_file(out);
    let mut cmd = Command::new(CLEAVE);
    cmd.arg("recover");
    for d in targets {
        cmd.arg("--target").arg(format!("file://{}", d.display()));
    }
    cmd.arg("--key-file").arg(data.join("master.key")).args(["--volume", volume, "--output"]).arg(out);
    let o = cmd.env("CLEAVE_LOG", "warn").output().unwrap();
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(std::fs::read(out).unwrap())
}

#[test]
fn fault_campaign() {
    let seed = env_u64("CLEAVE_CAMPAIGN_SEED", 0xC1EA7E);
    let budget = env_u64("CLEAVE_CAMPAIGN_FAULTS", 1000);
    let secs = env_u64("CLEAVE_CAMPAIGN_SECS", 300);
    eprintln!("fault campaign: seed {seed} (CLEAVE_CAMPAIGN_SEED), up to {budget} faults or {secs} s");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    // CLEAVE_CAMPAIGN_KEEP=1 keeps the data directory (targets, cache) for a post-mortem.
    let _tmp = if std::env::var_os("CLEAVE_CAMPAIGN_KEEP").is_some() {
        eprintln!("keeping {}", dir.display());
        #[allow(deprecated)]
        let _ = tmp.into_path();
        None
    } else {
        Some(tmp)
    };
    // The gateway's warnings (destage retries, health changes) would be thousands of lines.
    let log = std::env::var("CLEAVE_CAMPAIGN_LOG").unwrap_or_else(|_| "error".into());
    let s = Serve::start_env(&dir.join("data"), &["--cache-size", "16MiB"], &[("CLEAVE_LOG", &log)]);
    let script = dir.join("campaign_client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let mut vols = Vec::new();
    for (tag, (name, durability)) in [("vl", "local"), ("vd", "dispersed")].into_iter().enumerate() {
        s.cli_ok(&["volume", "create", name, "--size", "32MiB", "--durability", durability]);
        let show = s.show(name);
        assert_eq!((show["m"].as_u64(), show["n"].as_u64()), (Some(M as u64), Some(N as u64)));
        let scratch = dir.join(format!("scratch-{name}"));
        std::fs::create_dir_all(&scratch).unwrap();
        vols.push(Vol {
            name,
            tag: tag as u64 + 1,
            dispersed: durability == "dispersed",
            uuid: show["uuid"].as_str().unwrap().to_string(),
            durable: vec![0; BLOCKS],
            maybe: vec![Vec::new(); BLOCKS],
            client: None,
            stop_file: dir.join(format!("stop-{name}")),
            scratch,
        });
    }
    let (tx, rx) = channel();
    let mut c = Campaign {
        seed,
        rng: Rng(seed),
        dir: dir.clone(),
        s,
        vols,
        writes: HashMap::new(),
        history: Vec::new(),
        t0: Instant::now(),
        tx,
        rx,
        script,
        down: BTreeMap::new(),
        down_for: BTreeMap::new(),
        damaged: BTreeSet::new(),
        unhealed: BTreeSet::new(),
        replaced: None,
        last_health: Instant::now(),
        session: 0,
        killing: false,
        budget,
        planned_replaces: env_u64("CLEAVE_CAMPAIGN_REPLACES", (budget / 250).max(2)),
        want_replace: false,
        want_replace_since: None,
        n: Counters::default(),
    };
    c.start_clients();
    while c.total_faults() < budget && c.t0.elapsed() < Duration::from_secs(secs) {
        c.step();
    }
    let injecting = c.now();

    // The end: clients stop (after a last FLUSH), everything is restored and repaired.
    c.log("end: stopping the clients, restoring the targets".into());
    for t in c.down.keys().copied().collect::<Vec<_>>() {
        c.target_up(t);
    }
    for v in &c.vols {
        std::fs::write(&v.stop_file, b"").unwrap();
    }
    c.wait_clients_exit("at the end", Duration::from_secs(180));
    c.repair();
    c.wait_clean("at the end", Duration::from_secs(240));
    for i in 0..c.vols.len() {
        let name = c.vols[i].name;
        let out = c.s.cli(&["scrub", name, "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if !out.status.success() || report["problems"].as_array().is_none_or(|p| !p.is_empty()) {
            c.fail(&format!("scrub of {name} still finds problems after repair: {report}"));
        }
    }
    let images = c.verify_and_collapse("at the end");

    // Offline: any 3 of the 5 targets and the master key give the same bytes.
    c.s.term();
    for (i, image) in images.iter().enumerate() {
        let mut subset: Vec<usize> = (0..N).collect();
        while subset.len() > M {
            let k = c.rng.below(subset.len() as u64) as usize;
            subset.remove(k);
        }
        let dirs: Vec<PathBuf> = subset.iter().map(|&t| c.s.target_dir(t)).collect();
        let name = c.vols[i].name;
        match recover(&c.s.data, &dirs, name, &c.dir.join("recovered.img")) {
            Ok(got) if got == *image => c.n.bytes_verified += got.len() as u64,
            Ok(got) => {
                let at = got.iter().zip(image).position(|(a, b)| a != b);
                c.fail(&format!("cleave recover of {name} from targets {subset:?} differs (first at byte {at:?})"));
            }
            Err(e) => c.fail(&format!("cleave recover of {name} from targets {subset:?} failed: {e}")),
        }
        c.log(format!("recover {name} from targets {subset:?}: identical"));
    }

    let n = &c.n;
    let faults: Vec<String> = n.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let summary = format!(
        "campaign summary: seed {seed}; {} faults ({}), {} scrub repairs; {} writes ({} acknowledged, {} failed), \
         {} flushes ({} failed), {} client read-backs, {} client sessions, {} whole-image checks; \
         {} bytes verified; {:.0} s of faults, {:.0} s in all",
        c.total_faults(),
        faults.join(", "),
        n.repairs,
        n.writes,
        n.writes_acked,
        n.write_errors,
        n.flushes,
        n.flush_errors,
        n.readbacks,
        n.sessions,
        n.restarts_verified,
        n.bytes_verified,
        injecting,
        c.now()
    );
    eprintln!("{summary}");
    // For .ci/run to print: a passing test's output is not shown.
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("campaign-summary.txt"), summary + "\n");
}
