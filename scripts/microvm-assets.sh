#!/usr/bin/env bash
# Assets of the micro-VM runtime (crates/sandbox/src/microvm.rs), idempotent:
#   - a guest kernel from Debian's cloud kernel package (`apt-get download`, never installed on
#     the host): vmlinux (PVH ELF, boots directly with qemu -M microvm) and vmlinuz;
#   - the kernel modules the guest agent loads, in modules.dep order (modules/, modules/order);
#   - the static guest agent (crates/guest, PID 1 of the initramfs the host side generates).
# Usage: scripts/microvm-assets.sh [CACHE_DIR]   (default $NODELESS_MICROVM_ASSETS or
# /var/cache/nodeless/microvm). Needs: apt-get, dpkg-deb, lz4, cargo. Prints the cache dir.
set -euo pipefail

DEST="${1:-${NODELESS_MICROVM_ASSETS:-/var/cache/nodeless/microvm}}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The modules the guest needs, leaves first; their dependencies are added from modules.dep.
WANTED=(virtio_console virtio_blk virtio_net erofs overlay)

need() { command -v "$1" >/dev/null || { echo "microvm-assets: '$1' not found; apt-get install -y $2" >&2; exit 1; }; }
need dpkg-deb dpkg
need lz4 lz4
need apt-get apt
need cargo "rustup (https://rustup.rs)"

mkdir -p "$DEST"

# 1. The kernel package: the newest 6.1 cloud image (signed or unsigned, same kernel).
# (Re-)extracted when a wanted module is missing from an older cache (virtio_net was added later).
missing_module=""
for m in "${WANTED[@]}"; do
    grep -qx "$m" "$DEST/modules/order" 2>/dev/null || missing_module="$m"
done
if [ ! -s "$DEST/vmlinux" ] || [ ! -s "$DEST/modules/order" ] || [ -n "$missing_module" ]; then
    pkg="$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' | awk '{print $1}' | sort -V | tail -n1)"
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg="$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' | awk '{print $1}' | sort -V | tail -n1)"
    fi
    [ -n "$pkg" ] || { echo "microvm-assets: no linux-image-6.1.*-cloud-amd64 package in apt" >&2; exit 1; }
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    chown _apt "$work" 2>/dev/null || chmod 755 "$work"   # apt-get download runs as _apt
    (cd "$work" && apt-get download -q "$pkg" >/dev/null)
    dpkg-deb -x "$work"/*.deb "$work/x"
    kver="$(ls "$work/x/lib/modules" | head -n1)"
    cp "$work/x/boot/vmlinuz-$kver" "$work/vmlinuz"

    # vmlinux: the bzImage's payload is LZ4 (legacy frame, magic 02 21 4c 18); decompress from
    # the first offset that yields an ELF (scripts/extract-vmlinux's method).
    found=""
    for off in $(grep -aboP '\x02\x21\x4c\x18' "$work/vmlinuz" | cut -d: -f1); do
        tail -c +"$((off + 1))" "$work/vmlinuz" | lz4 -dc > "$work/vmlinux" 2>/dev/null || true
        if [ "$(head -c4 "$work/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ]; then found=1; break; fi
    done
    [ -n "$found" ] || { echo "microvm-assets: no LZ4 ELF payload in vmlinuz-$kver" >&2; exit 1; }

    # Modules with their dependencies, in load order (dependencies first). The package has no
    # modules.dep (depmod writes it at install time), so read each module's `depends=` from its
    # .modinfo section, which is what depmod itself does.
    moddir="$work/x/lib/modules/$kver"
    declare -A path_of=()
    while IFS= read -r f; do
        name="$(basename "$f")"; name="${name%%.ko*}"
        path_of[${name//-/_}]="$f"
    done < <(find "$moddir" -name '*.ko*')
    declare -A seen=()
    order=()
    depends_of() {
        case "$1" in
            *.ko) cat "$1" ;; *.ko.xz) xz -dc "$1" ;; *.ko.zst) zstd -dqc "$1" ;;
        esac | grep -aoP 'depends=[^\x00]*' | head -n1 | cut -d= -f2 | tr ',' ' '
    }
    visit() {
        local name="${1//-/_}" dep
        [ -n "${seen[$name]:-}" ] && return
        seen[$name]=1
        local f="${path_of[$name]:-}"
        [ -n "$f" ] || { echo "microvm-assets: module $name not in $kver (built in?)" >&2; return; }
        for dep in $(depends_of "$f"); do visit "$dep"; done
        order+=("$name")
    }
    for m in virtio_ring virtio virtio_mmio "${WANTED[@]}"; do visit "$m"; done
    rm -rf "$DEST/modules.new"
    mkdir -p "$DEST/modules.new"
    : > "$DEST/modules.new/order"
    for name in "${order[@]}"; do
        src="${path_of[$name]}"
        case "$src" in
            *.ko) cp "$src" "$DEST/modules.new/$name.ko" ;;
            *.ko.xz) xz -dc "$src" > "$DEST/modules.new/$name.ko" ;;
            *.ko.zst) zstd -dqc "$src" > "$DEST/modules.new/$name.ko" ;;
            *) echo "microvm-assets: unknown module format $src" >&2; exit 1 ;;
        esac
        echo "$name" >> "$DEST/modules.new/order"
    done
    rm -rf "$DEST/modules"
    mv "$DEST/modules.new" "$DEST/modules"
    cp "$work/vmlinuz" "$DEST/vmlinuz"
    cp "$work/vmlinux" "$DEST/vmlinux.new"
    mv "$DEST/vmlinux.new" "$DEST/vmlinux"
    echo "$kver" > "$DEST/kernel-version"
fi

# 2. The static guest agent (rebuilt every run: cargo makes this cheap when nothing changed).
(cd "$ROOT" && cargo rustc -q -p guest --release --bin nodeless-guest --target x86_64-unknown-linux-gnu -- -C target-feature=+crt-static -C strip=debuginfo)
bin="${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-linux-gnu/release/nodeless-guest"
if ! cmp -s "$bin" "$DEST/nodeless-guest" 2>/dev/null; then
    cp "$bin" "$DEST/nodeless-guest.new"
    mv "$DEST/nodeless-guest.new" "$DEST/nodeless-guest"
fi

echo "$DEST"
