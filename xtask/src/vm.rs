// SPDX-License-Identifier: GPL-2.0-only
//! QEMU runner: one VM boot (plus the kexecs its tests do), serial console
//! captured to a log, KTAP read live, per-test timeouts.

use crate::ktap::{classify, Line, TestLine};
use crate::stream::{self, StreamReport};
use crate::util::{Paths, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Time allowed from QEMU start (or a test's end) to the next test's start
/// line: firmware, kernel boot and PID 1 setup under TCG.
const BOOT_BUDGET: Duration = Duration::from_secs(120);
/// Time allowed after `# gtest: done` for the power-off.
const POWEROFF_BUDGET: Duration = Duration::from_secs(30);
/// Guest memory of a suite that does not set its own; guestmemfs regions
/// are carved out of it.
const DEFAULT_MEMORY: &str = "4G";

/// Kernel parameters every test boot gets.
pub const BASE_CMDLINE: &[&str] = &[
    "console=ttyS0,115200",
    "panic=-1",
    "oops=panic",
    "intel_iommu=on",
    "kho=on",
    "liveupdate=on",
];

/// How much of the console to show while the VM runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Top-level result lines only.
    Results,
    /// Diagnostics and results, readable (the demo).
    Human,
    /// Every console line (`GMFS_VERBOSE=1`).
    All,
}

/// Suite kernel parameter that also gives the VM a second igb (06.0; its VF slots must not meet the first one's).
pub const SECOND_IGB: &str = "gtest.second_igb=1";

/// Suite kernel parameter for tests of the igb's VFs: QEMU 10.0's igb
/// realizes its VFs before it sets their BAR types, so a VF BAR decodes at
/// the low 32 bits of its address only. With no spare 64-bit window
/// (`pci-hole64-size=0`), the guest puts the VF BARs below 4 GiB.
pub const IGB_VFS: &str = "gtest.igb_vfs=1";

pub struct VmRun {
    /// Names the log file.
    pub name: String,
    /// Guest tests with their timeouts, in order.
    pub tests: Vec<(String, u64)>,
    pub cmdline: Vec<String>,
    pub echo: Echo,
    /// Guest memory in QEMU's size syntax; `None`: [`DEFAULT_MEMORY`].
    pub memory: Option<&'static str>,
    /// Trace the igb's writes of received frames (one line per frame),
    /// and the resets, SR-IOV events and config writes that would disturb
    /// it or its VF, to `vm-<name>.trace`, for the checks of UDP streams.
    pub trace_rx: bool,
}

pub struct VmOutcome {
    pub results: Vec<TestLine>,
    /// Top-level KTAP lines (plan, diagnostics, results), for failure reports.
    pub ktap: Vec<String>,
    /// Set when QEMU was killed: what it was doing.
    pub timed_out: Option<String>,
    /// `# gtest: done` seen: the guest finished its list.
    pub done: bool,
    pub log: PathBuf,
    /// The UDP streams the guest asked for (`# stream: start`), in order.
    pub streams: Vec<StreamReport>,
}

/// The igb NIC's backend: QEMU sends the NIC's frames as UDP datagrams to
/// `host` and receives frames sent to `qemu_port`, both on loopback.
pub struct NetBackend {
    pub host: UdpSocket,
    pub qemu_port: u16,
}

impl NetBackend {
    fn new() -> Result<Self> {
        let host = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind UDP: {e}"))?;
        // Ask the kernel for a free port for QEMU's end, then release it.
        let probe = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind UDP: {e}"))?;
        let qemu_port = probe.local_addr().map_err(|e| e.to_string())?.port();
        drop(probe);
        Ok(NetBackend { host, qemu_port })
    }

    fn qemu_args(&self) -> Result<String> {
        let host_port = self.host.local_addr().map_err(|e| e.to_string())?.port();
        Ok(format!(
            "dgram,id=net0,local.type=inet,local.host=127.0.0.1,local.port={},\
             remote.type=inet,remote.host=127.0.0.1,remote.port={host_port}",
            self.qemu_port
        ))
    }

    /// The same sockets, for another thread.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(NetBackend {
            host: self
                .host
                .try_clone()
                .map_err(|e| format!("clone the UDP socket: {e}"))?,
            qemu_port: self.qemu_port,
        })
    }

    /// Delivers one Ethernet frame to the guest's igb NIC.
    pub fn send_frame(&self, frame: &[u8]) -> Result<()> {
        self.host
            .send_to(frame, ("127.0.0.1", self.qemu_port))
            .map(|_| ())
            .map_err(|e| format!("send frame to QEMU: {e}"))
    }
}

/// QEMU's CPU and memory options. An explicit size gets a RAM backend
/// with `reserve=off` (MAP_NORESERVE): the host only pays for the memory
/// the guest touches, so a 520G guest boots on a 24 GiB host.
///
/// It also gets a CPU with 46 physical address bits. Under TCG, `-cpu max`
/// has 40 (1 TiB of guest-physical space) and an AMD vendor, and q35 then
/// starts the RAM above 4 GiB at 1 TiB whenever it would reach the
/// HyperTransport hole below 1 TiB; a 1040G guest thus ends above 2 TiB
/// and QEMU 10.0 refuses to start it ("Address space limit 0xffffffffff <
/// 0x20b7fffffff phys-bits too low (40)"). 46 bits (64 TiB, as on current
/// server CPUs) fits any size we use; smaller guests keep their layout.
fn memory_args(memory: Option<&str>) -> Vec<String> {
    match memory {
        None => vec![
            "-cpu".into(),
            "max".into(),
            "-m".into(),
            DEFAULT_MEMORY.into(),
        ],
        Some(size) => vec![
            "-cpu".into(),
            "max,phys-bits=46".into(),
            "-object".into(),
            format!("memory-backend-ram,id=m0,size={size},reserve=off"),
            "-machine".into(),
            "memory-backend=m0".into(),
            "-m".into(),
            size.into(),
        ],
    }
}

/// Where QEMU writes the igb receive trace of `run`.
fn trace_path(p: &Paths, run: &VmRun) -> PathBuf {
    p.log(&format!("vm-{}.trace", run.name))
}

/// QEMU options that log each frame igb writes to (or drops from) the
/// guest's RX ring, and the PF/VF events of [`stream::DEVICE_EVENTS`]
/// (every config write: a few thousand lines per boot), to `file`, with
/// wall-clock times: the `log` trace backend prefixes
/// `<tid>@<sec>.<usec>:` only with `-msg timestamp=on`. Every `-trace`
/// names the file: one without `file=` resets it.
fn trace_args(file: &Path) -> Vec<String> {
    // QEMU option values double their commas.
    let file = file.display().to_string().replace(',', ",,");
    let mut args = vec!["-msg".to_owned(), "timestamp=on".to_owned()];
    for event in stream::trace_events() {
        args.push("-trace".into());
        args.push(format!("enable={event},file={file}"));
    }
    args
}

fn qemu_command(p: &Paths, run: &VmRun, net: &NetBackend) -> Result<Command> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-M",
        "q35,kernel-irqchip=split",
        "-smp",
        "2",
    ])
    .args(memory_args(run.memory))
    .args([
        "-nodefaults",
        "-display",
        "none",
        "-vga",
        "none",
        "-no-reboot",
    ])
    .args(["-serial", "stdio"])
    // The IOMMU must come before the devices it translates for.
    .args(["-device", "intel-iommu,intremap=on,caching-mode=on"])
    .args(["-netdev", &net.qemu_args()?])
    .args(["-device", "igb,netdev=net0,addr=02.0,romfile="])
    // A second igb, not connected, for tests of a device that is not
    // preserved next to one that is (`SECOND_IGB` on the command line).
    .args(if run.cmdline.iter().any(|a| a == SECOND_IGB) {
        &["-device", "igb,addr=06.0,romfile="][..]
    } else {
        &[][..]
    })
    .args(if run.cmdline.iter().any(|a| a == IGB_VFS) {
        &["-global", "q35-pcihost.pci-hole64-size=0"][..]
    } else {
        &[][..]
    })
    .arg("-kernel")
    .arg(p.bzimage())
    .arg("-initrd")
    .arg(p.initramfs())
    .arg("-append")
    .arg(run.cmdline.join(" "));
    if run.trace_rx {
        cmd.args(trace_args(&trace_path(p, run)));
    }
    Ok(cmd)
}

/// Console lines with their host arrival time (CLOCK_REALTIME ns), taken
/// as soon as read: the stream analysis compares them with frame sends.
fn spawn_reader(child: &mut Child, log: File) -> mpsc::Receiver<(u64, String)> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut log = log;
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let t_ns = stream::realtime_ns();
                    let _ = log.write_all(&buf);
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    if tx.send((t_ns, line)).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

fn echo_line(echo: Echo, prefix: &str, raw: &str, line: &Line) {
    match (echo, line) {
        (Echo::All, _) => println!("{prefix}| {raw}"),
        (Echo::Results, Line::Result(t)) => println!("  {prefix}: {raw}", raw = result_text(t)),
        (Echo::Human, Line::Result(t)) => println!("  => {}", result_text(t)),
        (Echo::Human, Line::Diag(d)) if !d.starts_with("gtest: start") => println!("  {d}"),
        (Echo::Human, Line::Start(name)) => println!("\n[{name}]"),
        _ => {}
    }
}

fn result_text(t: &TestLine) -> String {
    let status = match (t.ok, t.skipped()) {
        (true, true) => "SKIP",
        (true, false) => "PASS",
        (false, _) => "FAIL",
    };
    match &t.directive {
        Some(d) => format!("{status} {} ({d})", t.name),
        None => format!("{status} {}", t.name),
    }
}

/// Boots the VM, runs its tests, returns what the guest reported.
pub fn run(p: &Paths, run: &VmRun) -> Result<VmOutcome> {
    let log_path = p.log(&format!("vm-{}.log", run.name));
    let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let stderr_path = p.log(&format!("vm-{}.qemu-stderr.log", run.name));
    let stderr = File::create(&stderr_path).map_err(|e| e.to_string())?;
    let net = NetBackend::new()?;
    let mut streams = stream::Monitor::new(&net)?;
    let trace = trace_path(p, run);
    // A stale trace would lend an earlier run's write times.
    let _ = std::fs::remove_file(&trace);
    let mut child = qemu_command(p, run, &net)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    let rx = spawn_reader(&mut child, log);
    let timeout_of = |name: &str| {
        run.tests
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| Duration::from_secs(*t))
            .unwrap_or(BOOT_BUDGET)
    };
    let mut outcome = VmOutcome {
        results: Vec::new(),
        ktap: Vec::new(),
        timed_out: None,
        done: false,
        log: log_path,
        streams: Vec::new(),
    };
    let mut current: Option<String> = None;
    let mut deadline = Instant::now() + BOOT_BUDGET;
    loop {
        let now = Instant::now();
        if now >= deadline {
            outcome.timed_out = Some(match &current {
                Some(name) if !outcome.done => format!(
                    "test {name} did not finish within {}s",
                    timeout_of(name).as_secs()
                ),
                _ if outcome.done => "the VM did not power off after the tests".into(),
                _ => format!(
                    "the guest did not start its tests within {}s",
                    BOOT_BUDGET.as_secs()
                ),
            });
            let _ = child.kill();
            break;
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_secs(1))) {
            Ok((t_ns, raw)) => {
                streams.line(t_ns, &raw);
                let line = classify(&raw);
                echo_line(run.echo, &run.name, &raw, &line);
                match &line {
                    Line::Result(t) => {
                        outcome.results.push(t.clone());
                        // Next: the following test's start line.
                        deadline = Instant::now() + BOOT_BUDGET;
                    }
                    Line::Start(name) if current.as_deref() != Some(name) => {
                        deadline = Instant::now() + timeout_of(name);
                        current = Some(name.clone());
                    }
                    Line::Done => {
                        outcome.done = true;
                        deadline = Instant::now() + POWEROFF_BUDGET;
                    }
                    _ => {}
                }
                if !matches!(line, Line::Other) {
                    outcome.ktap.push(raw);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Stop sending before QEMU's port goes away.
    outcome.streams = streams.finish();
    let status = child.wait().map_err(|e| e.to_string())?;
    if run.trace_rx && !outcome.streams.is_empty() {
        // Read once QEMU exited: its log is flushed then.
        let traced = stream::read_trace(&trace).unwrap_or_else(|e| {
            eprintln!("xtask: no device write times or events: {e}");
            stream::Trace::default()
        });
        stream::attach_trace(&mut outcome.streams, &traced);
    }
    if outcome.ktap.is_empty() && !status.success() && outcome.timed_out.is_none() {
        let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        return Err(format!(
            "qemu-system-x86_64 exited with {status}: {}",
            err.lines().last().unwrap_or("(no message)")
        ));
    }
    Ok(outcome)
}

/// The last `n` lines of a log file.
pub fn tail(path: &PathBuf, n: usize) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_options() {
        assert_eq!(memory_args(None), ["-cpu", "max", "-m", DEFAULT_MEMORY]);
        assert_eq!(
            memory_args(Some("520G")),
            [
                "-cpu",
                "max,phys-bits=46",
                "-object",
                "memory-backend-ram,id=m0,size=520G,reserve=off",
                "-machine",
                "memory-backend=m0",
                "-m",
                "520G"
            ]
        );
    }

    #[test]
    fn trace_options() {
        assert_eq!(
            trace_args(Path::new("/l,ogs/vm-x.trace")),
            [
                "-msg",
                "timestamp=on",
                "-trace",
                "enable=e1000e_rx_written_to_guest,file=/l,,ogs/vm-x.trace",
                "-trace",
                "enable=e1000e_rx_not_written_to_guest,file=/l,,ogs/vm-x.trace",
                "-trace",
                "enable=igb_core_vf_reset,file=/l,,ogs/vm-x.trace",
                "-trace",
                "enable=sriov_*,file=/l,,ogs/vm-x.trace",
                "-trace",
                "enable=e1000e_cb_qdev_reset_hold,file=/l,,ogs/vm-x.trace",
                "-trace",
                "enable=e1000e_core_ctrl_sw_reset,file=/l,,ogs/vm-x.trace",
                "-trace",
                "enable=pci_cfg_write,file=/l,,ogs/vm-x.trace"
            ]
        );
    }
}
