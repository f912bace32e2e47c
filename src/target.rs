//! Validation and canonical form of what clients may ask for: module names, modaliases and
//! module parameters.
//!
//! Everything here is a pure function over strings, so it is cheap to test and to fuzz. The rules
//! are deliberately narrow: a target is a module name or a modalias, never a path; a parameter is
//! `name` or `name=value` with a value drawn from a small safe character set, because parameters
//! can reach `/bin/sh` through `install` commands (as `$CMDLINE_OPTS`, exactly as modprobe passes
//! them) and must never be able to inject shell syntax there.
//!
//! A `/` is allowed in a modalias only ([`modalias_prefix`]): the kernel puts slashes in some
//! (every `dmi:` modalias carries the BIOS date, `bd01/15/2019`, and vendor strings such as
//! `cvrN/A`; `drivers/firmware/dmi-id.c` keeps every byte above space and below 127 except `:`),
//! but never in a module name. A target only ever reaches libkmod's lookup
//! (`kmod_module_new_from_lookup`, see `kmod`), which searches the module indexes and
//! modprobe.d and never opens a path built from the target.

use thiserror::Error;

/// Longest target accepted. The kernel caps a whole uevent environment at 2048 bytes, so no real
/// modalias is longer; module names themselves are at most 55 bytes (`MODULE_NAME_LEN - 1`).
pub const MAX_TARGET_LEN: usize = 2048;
/// Longest module name the kernel accepts (`MODULE_NAME_LEN` is 56 including the NUL).
pub const MAX_MODULE_NAME_LEN: usize = 55;
/// Longest single `name=value` parameter accepted.
pub const MAX_PARAM_LEN: usize = 512;
/// Most parameters accepted with one load request.
pub const MAX_PARAMS: usize = 64;

/// Why a target or parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    /// The target was the empty string.
    #[error("empty target")]
    Empty,
    /// Longer than [`MAX_TARGET_LEN`].
    #[error("target is {0} bytes long; the limit is {MAX_TARGET_LEN}")]
    TooLong(usize),
    /// Contains `/` without being a modalias (see [`modalias_prefix`]): module names and
    /// aliases are never paths.
    #[error(
        "'/' is allowed only in a modalias (BUS:..., BUS of letters, digits, '_' and '-'); \
         module names are not paths"
    )]
    Path,
    /// Starts with `.` or `-` (`..`, hidden files, option look-alikes).
    #[error("target may not start with '{0}'")]
    BadStart(char),
    /// A control character, NUL, whitespace or non-ASCII byte.
    #[error("target contains a disallowed character {0:?}")]
    BadChar(char),
    /// A parameter that is not `name` or `name=value` over the allowed characters.
    #[error("invalid parameter {0:?}: expected NAME or NAME=VALUE (NAME: letters, digits, '_', '-'; VALUE: letters, digits and _ . , : + - / = @ %)")]
    BadParam(String),
    /// More than [`MAX_PARAMS`] parameters.
    #[error("too many parameters: {0} (limit {MAX_PARAMS})")]
    TooManyParams(usize),
}

/// Checks that `target` is a plausible module name or modalias and returns it unchanged.
///
/// Allowed: printable ASCII except whitespace; not starting with `.` or `-`; `/` only in a
/// modalias (a target with a [`modalias_prefix`]). Modaliases use every printable character
/// (`:`, `*`, `,`, `+`, `(`, `<`, `/`... DMI strings keep whatever the firmware wrote), so the
/// set is wider than for names.
pub fn validate_target(target: &str) -> Result<&str, TargetError> {
    if target.is_empty() {
        return Err(TargetError::Empty);
    }
    if target.len() > MAX_TARGET_LEN {
        return Err(TargetError::TooLong(target.len()));
    }
    if let Some(c) = target.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(TargetError::BadChar(c));
    }
    if target.contains('/') && modalias_prefix(target).is_none() {
        return Err(TargetError::Path);
    }
    match target.chars().next() {
        Some(c @ ('.' | '-')) => Err(TargetError::BadStart(c)),
        _ => Ok(target),
    }
}

/// The bus prefix of a modalias: the text before the first `:` when it is a non-empty run of
/// letters, digits, `_` and `-` (`pci`, `dmi`, `cpu`, `of`, `xen-backend`...), as every modalias
/// the kernel emits has one. `None` for anything else: module names and aliases without a `:`,
/// paths (`../x:y`, `/x:y`) and glob patterns (`acpi*:...`).
pub fn modalias_prefix(target: &str) -> Option<&str> {
    let (prefix, _) = target.split_once(':')?;
    let valid = !prefix.is_empty()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    valid.then_some(prefix)
}

/// True when `target` has the shape of a module name (letters, digits, `_`, `-`, short enough).
/// Modaliases (`pci:v...`) and alias names with other characters are not names.
pub fn looks_like_module_name(target: &str) -> bool {
    !target.is_empty()
        && target.len() <= MAX_MODULE_NAME_LEN
        && target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The canonical form of a module name: dashes and underscores are the same name to the kernel,
/// which stores underscores (`snd-hda-intel` is `/sys/module/snd_hda_intel`).
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Validates module parameters (`NAME` or `NAME=VALUE`) and returns them joined by spaces, in the
/// form `finit_module` takes. Dashes in names are folded to underscores, as the kernel does.
pub fn validate_params(params: &[String]) -> Result<String, TargetError> {
    if params.len() > MAX_PARAMS {
        return Err(TargetError::TooManyParams(params.len()));
    }
    let mut out = Vec::with_capacity(params.len());
    for param in params {
        out.push(validate_param(param)?);
    }
    Ok(out.join(" "))
}

fn validate_param(param: &str) -> Result<String, TargetError> {
    let bad = || TargetError::BadParam(param.chars().take(64).collect());
    if param.len() > MAX_PARAM_LEN {
        return Err(bad());
    }
    let (name, value) = match param.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (param, None),
    };
    let name_ok = !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let value_ok = value.is_none_or(|v| v.bytes().all(is_safe_value_byte));
    if !name_ok || !value_ok {
        return Err(bad());
    }
    let name = canonical_name(name);
    Ok(match value {
        Some(value) => format!("{name}={value}"),
        None => name,
    })
}

/// Bytes allowed in parameter values: enough for numbers, lists, paths and addresses, and nothing
/// a shell gives meaning to (no quotes, `$`, `;`, `|`, `&`, backticks, globs, whitespace).
fn is_safe_value_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_.,:+-/=@%".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_and_modaliases() {
        for ok in [
            "e1000",
            "snd-hda-intel",
            "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00",
            "cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0001",
            "acpi*:PNP0A03:*",
            "fs-vfat",
        ] {
            assert_eq!(validate_target(ok), Ok(ok), "{ok}");
        }
    }

    /// Asserts that `modalias` is accepted unchanged, as a modalias of bus `bus`.
    fn assert_modalias(bus: &str, modalias: &str) {
        assert_eq!(validate_target(modalias), Ok(modalias), "{modalias}");
        assert_eq!(modalias_prefix(modalias), Some(bus), "{modalias}");
        assert!(!looks_like_module_name(modalias), "{modalias}");
    }

    /// `drivers/firmware/dmi-id.c`: `dmi:bvn%s:bvr%s:bd%s:br%s:efr%s:svn%s:pn%s:pvr%s:rvn%s:
    /// rn%s:rvr%s:cvn%s:ct%s:cvr%s:sku%s:`, every value with bytes <= ' ', >= 127 and ':'
    /// dropped. The BIOS date always has slashes, vendor strings may too.
    #[test]
    fn dmi_modaliases_with_dates_and_slashes() {
        for real in [
            // Dell PowerEdge R640 (modprobe: dcdbas).
            "dmi:bvnDellInc.:bvr2.1.5:bd01/15/2019:br2.1:svnDellInc.:pnPowerEdgeR640:pvr:\
             rvnDellInc.:rn0W23H8:rvrA00:cvnDellInc.:ct23:cvr:sku:",
            // VMware guest (modprobe: vmw_balloon, and vmw_vmci as its dependency).
            "dmi:bvnPhoenixTechnologiesLTD:bvr6.00:bd11/12/2020:br4.6:svnVMware,Inc.:\
             pnVMwareVirtualPlatform:pvrNone:rvnIntelCorporation:rn440BXDesktopReferencePlatform:\
             rvrNone:cvnNoEnum:ct1:cvrN/A:sku:",
            // qemu's SeaBIOS, i440FX machine.
            "dmi:bvnSeaBIOS:bvr1.16.2-debian-1.16.2-1:bd04/01/2014:br0.0:svnQEMU:\
             pnStandardPC(i440FX+PIIX,1996):pvrpc-i440fx-8.0:cvnQEMU:ct1:cvrpc-i440fx-8.0:sku:",
            // IBM x3950 M2 (ibmaem's `pnIBM3850M2/x3950M2-*`): slashes and brackets in names.
            "dmi:bvnIBM:bvr-[A3E157AUS-1.14]-:bd08/11/2011:svnIBM:pnIBM3850M2/x3950M2-[72333RU]-:\
             pvr1.0:rvnIBM:rn00D4062:rvr:cvnIBM:ct23:cvrN/A:",
        ] {
            assert!(real.contains('/'), "{real}");
            assert_modalias("dmi", real);
        }
    }

    /// `drivers/pci/pci-sysfs.c`: `pci:v%08Xd%08Xsv%08Xsd%08Xbc%02Xsc%02Xi%02X`.
    #[test]
    fn pci_modalias() {
        assert_modalias(
            "pci",
            "pci:v00008086d00001E31sv000017AAsd000021F3bc0Csc03i30",
        );
        assert_modalias(
            "pci",
            "pci:v00001AF4d00001045sv00001AF4sd00001045bcFFscFFi00",
        );
    }

    /// `drivers/usb/core/message.c`: `usb:v%04Xp%04Xd%04Xdc%02Xdsc%02Xdp%02Xic%02Xisc%02X
    /// ip%02Xin%02X`.
    #[test]
    fn usb_modalias() {
        assert_modalias("usb", "usb:v1D6Bp0003d0601dc09dsc00dp03ic09isc00ip00in00");
    }

    /// `drivers/acpi/device_sysfs.c`: `acpi:` then each of _HID and _CID followed by `:`.
    #[test]
    fn acpi_modalias() {
        assert_modalias("acpi", "acpi:PNP0A08:PNP0A03:");
        assert_modalias("acpi", "acpi:ACPI0013:");
    }

    /// `drivers/base/platform.c`: `platform:%s` (the device name).
    #[test]
    fn platform_modalias() {
        assert_modalias("platform", "platform:rtc_cmos");
        assert_modalias("platform", "platform:serial8250");
    }

    /// `drivers/input/input.c`: `input:b%04Xv%04Xp%04Xe%04X-` then the capability bitmaps
    /// (`e`, `k`, `r`, `a`, `m`, `l`, `s`, `f`, `w`), each a list of hex numbers with commas.
    #[test]
    fn input_modalias() {
        assert_modalias("input", "input:b0019v0000p0001e0000-e0,1,k74,ramlsfw");
        assert_modalias(
            "input",
            "input:b0011v0001p0001eAB41-e0,1,4,11,14,k71,72,73,74,75,77,79,7A,7B,7C,7D,7E,7F,80,\
             8C,8E,8F,9B,9C,9D,9E,9F,A3,A4,A5,A6,AC,AD,B7,B8,B9,D9,E2,ram4,l0,1,2,sfw",
        );
    }

    /// `drivers/base/cpu.c` with x86's `CPU_FEATURE_TYPEFMT`: `cpu:type:x86,ven%04Xfam%04X
    /// mod%04X:feature:` then `,%04X` per feature bit.
    #[test]
    fn cpu_modalias() {
        assert_modalias(
            "cpu",
            "cpu:type:x86,ven0002fam0019mod0011:feature:,0000,0001,0002,0003,0004,0005,0006,\
             0007,0008,0009,000B,000C,000D,000E,000F,0010,0011,0013,0017,0018,0019,001A,001C,\
             0020,0021,0022,0023,0024,0025,0026,0027,0028,0029,002B,002C,002D,002E,002F,0030,\
             0031,0034,0036,0037,0038,0039,003A,003B,003D,0064,0068,006E,0070,0074,0075,0076",
        );
    }

    /// `drivers/virtio/virtio.c`: `virtio:d%08Xv%08X`.
    #[test]
    fn virtio_modalias() {
        assert_modalias("virtio", "virtio:d00000005v00001AF4");
    }

    /// `drivers/hid/hid-core.c`: `hid:b%04Xg%04Xv%08Xp%08X`.
    #[test]
    fn hid_modalias() {
        assert_modalias("hid", "hid:b0003g0001v0000046Dp0000C52B");
    }

    /// `drivers/of/device.c`: `of:N<name>T<device_type>` then `C<compatible>` per string. A
    /// node without device_type prints `(null)` (older kernels: `<NULL>`); compatibles have
    /// commas.
    #[test]
    fn of_modalias() {
        assert_modalias("of", "of:NserialT(null)Cbrcm,bcm2835-aux-uart");
        assert_modalias("of", "of:NtimerT<NULL>Carm,armv7-timer");
        assert_modalias(
            "of",
            "of:NethernetT(null)Cbrcm,bcm2711-genet-v5Cbrcm,genet-v5",
        );
    }

    /// `drivers/scsi/scsi_sysfs.c`: `scsi:t-0x%02x`.
    #[test]
    fn scsi_modalias() {
        assert_modalias("scsi", "scsi:t-0x00");
        assert_modalias("scsi", "scsi:t-0x05");
    }

    /// `drivers/input/serio/serio.c`: `serio:ty%02Xpr%02Xid%02Xex%02X`.
    #[test]
    fn serio_modalias() {
        assert_modalias("serio", "serio:ty01pr00id00ex00");
    }

    /// The rest of the kernel's forms, and aliases with a dash in the prefix or a slash.
    #[test]
    fn other_modaliases() {
        for (bus, real) in [
            ("wmi", "wmi:05901221-D566-11D1-B2F0-00A0C9062910"),
            ("mdio", "mdio:00000000000100010010110000010010"),
            ("i2c", "i2c:tpm_i2c_infineon"),
            ("spi", "spi:tpm_tis_spi"),
            ("sdio", "sdio:c07v02D0dA9A6"),
            (
                "pcmcia",
                "pcmcia:m0279c950Bf02fn00pfn00pa2B8A5B4Dpb5E8F4D87pc00000000pd00000000",
            ),
            ("xen-backend", "xen-backend:vbd"),
            ("ishtp", "ishtp:{33AECD58-B679-4E54-9BD9-A04D34F0C226}"),
            (
                "mei",
                "mei:mei_hdcp:b638ab7e-94e2-4ea2-a552-d1c54b627f04:01:",
            ),
            ("devname", "devname:net/tun"),
        ] {
            assert_modalias(bus, real);
        }
    }

    #[test]
    fn slashes_without_a_bus_prefix_are_paths() {
        for path in [
            "../x",
            "a/b",
            "/lib/modules/6.1.0/kernel/fs/fat/vfat.ko",
            "vfat/../../x",
            // Not a bus prefix before the first ':': empty, a path, a glob, a dot.
            ":bd01/15/2019:",
            "/x:y",
            "../x:y/z",
            "kernel/fs:vfat",
            "acpi*:PNP0A03/x:",
            "a.b:c/d",
        ] {
            assert_eq!(validate_target(path), Err(TargetError::Path), "{path}");
            assert_eq!(modalias_prefix(path), None, "{path}");
        }
        // Without a slash the prefix does not matter.
        assert_eq!(validate_target("acpi*:PNP0A03:*"), Ok("acpi*:PNP0A03:*"));
        assert_eq!(modalias_prefix("e1000"), None);
        assert_eq!(modalias_prefix("dmi:x"), Some("dmi"));
    }

    #[test]
    fn refuses_paths_controls_and_oddities() {
        assert_eq!(validate_target(""), Err(TargetError::Empty));
        assert_eq!(validate_target("../x"), Err(TargetError::Path));
        assert_eq!(validate_target(".."), Err(TargetError::BadStart('.')));
        assert_eq!(validate_target("a/b"), Err(TargetError::Path));
        assert_eq!(validate_target("-r"), Err(TargetError::BadStart('-')));
        assert_eq!(validate_target("a b"), Err(TargetError::BadChar(' ')));
        assert_eq!(validate_target("a\0b"), Err(TargetError::BadChar('\0')));
        assert_eq!(validate_target("a\nb"), Err(TargetError::BadChar('\n')));
        assert_eq!(validate_target("é"), Err(TargetError::BadChar('é')));
        let long = "a".repeat(MAX_TARGET_LEN + 1);
        assert_eq!(
            validate_target(&long),
            Err(TargetError::TooLong(MAX_TARGET_LEN + 1))
        );
    }

    #[test]
    fn canonical_folds_dashes() {
        assert_eq!(canonical_name("snd-hda-intel"), "snd_hda_intel");
        assert!(looks_like_module_name("snd-hda_intel"));
        assert!(!looks_like_module_name("pci:v1"));
    }

    #[test]
    fn params_are_checked_and_joined() {
        let ok = vec![
            "debug=1".to_string(),
            "fw-path=/lib/fw".to_string(),
            "quiet".into(),
        ];
        assert_eq!(
            validate_params(&ok).unwrap(),
            "debug=1 fw_path=/lib/fw quiet"
        );
        for bad in [
            "x=$(reboot)",
            "x=`id`",
            "x=a;b",
            "x=a b",
            "=1",
            "x=\"q\"",
            "-x=1",
        ] {
            assert!(validate_params(&[bad.to_string()]).is_err(), "{bad}");
        }
        let many = vec!["a=1".to_string(); MAX_PARAMS + 1];
        assert_eq!(
            validate_params(&many),
            Err(TargetError::TooManyParams(MAX_PARAMS + 1))
        );
    }
}
