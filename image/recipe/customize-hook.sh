#!/bin/sh
# mmdebstrap --customize-hook for the kmsnode root ($1). Inputs come from the environment set by
# image/build.py: KMSNODE_WHEELS, KMSNODE_PUBKEY, KMSNODE_KERNEL_OUT, KMSNODE_RECIPE,
# KMSNODE_PRUNE (module directories to drop, relative to /usr/lib/modules/<ver>).
set -eu
R="$1"
W="$KMSNODE_WHEELS"; K="$KMSNODE_KERNEL_OUT"; r="$KMSNODE_RECIPE"
# Python venv with the node and its pinned wheels, installed offline.
cp -r "$W" "$R/tmp/wheels"
chroot "$R" python3 -m venv --without-pip /opt/kmsnode
chroot "$R" sh -c 'PIP=$(ls /tmp/wheels/pip-*.whl)
  /opt/kmsnode/bin/python "$PIP/pip" install -q --no-index --no-cache-dir \
    --disable-pip-version-check --find-links /tmp/wheels kmsnode'
rm -rf "$R/tmp/wheels"
# Recipe: users, units, udev rules, mounts, network, HSM config, update key.
install -D -m 0644 "$r/kmsnode.sysusers" "$R/usr/lib/sysusers.d/kmsnode.conf"
chroot "$R" systemd-sysusers /usr/lib/sysusers.d/kmsnode.conf
U="$R/usr/lib/systemd/system"
install -D -m 0644 "$r/kmsnode.service" "$U/kmsnode.service"
install -D -m 0644 "$r/kmsnode-firstboot.service" "$U/kmsnode-firstboot.service"
install -D -m 0755 "$r/kmsnode-firstboot" "$R/usr/libexec/kmsnode/kmsnode-firstboot"
install -D -m 0644 "$r/70-kmsnode-hsm.rules" "$R/usr/lib/udev/rules.d/70-kmsnode-hsm.rules"
install -D -m 0644 "$r/80-kmsnode.network" "$R/usr/lib/systemd/network/80-kmsnode.network"
install -D -m 0644 "$r/fstab" "$R/etc/fstab"
install -D -m 0644 "$r/softhsm2.conf" "$R/etc/kmsnode/softhsm2.conf"
install -D -m 0644 "$KMSNODE_PUBKEY" "$R/usr/share/kmsnode/update-keys/release.pub"
install -d -m 0755 "$R/var/lib/kmsnode"
echo kmsnode > "$R/etc/hostname"
chroot "$R" systemctl enable kmsnode.service kmsnode-firstboot.service systemd-networkd.service
chroot "$R" systemctl mask apt-daily.timer apt-daily-upgrade.timer 2>/dev/null || true
# Kernel: unpack (no initramfs generator runs), prune, depmod; copy vmlinuz and busybox out.
mkdir -p "$K"
chroot "$R" sh -c 'cd /tmp
  KPKG=$(apt-cache depends --important linux-image-amd64 \
         | sed -n "s/.*Depends: \(linux-image-[0-9].*\)/\1/p" | head -n1)
  apt-get download -q "$KPKG" busybox-static >/dev/null'
for deb in "$R"/tmp/*.deb; do
    case "$deb" in
        *busybox-static*) dpkg-deb -x "$deb" "$K/busybox" ;;
        *) dpkg-deb -x "$deb" "$R"
           dpkg-deb -f "$deb" Package Version | paste -sd'\t' > "$K/kernel-package" ;;
    esac
done
rm -f "$R"/tmp/*.deb
KVER=$(ls "$R/usr/lib/modules" | head -n1)
for p in $KMSNODE_PRUNE; do rm -rf "$R/usr/lib/modules/$KVER/$p"; done
chroot "$R" depmod "$KVER"
cp "$R/boot/vmlinuz-$KVER" "$K/vmlinuz"
echo "$KVER" > "$K/kver"
# No package manager at runtime: drop apt state the read-only root would carry for nothing.
rm -rf "$R/var/lib/apt/lists/"* "$R/var/cache/apt/"*.bin "$R/var/log/"*.log
