#!/bin/sh
# Install the node into the extracted base root ($1), run as root on the build host:
# the venv with the node's wheel and its pinned wheels (offline), the service user, units, udev
# rules, mounts, network, kernel settings, the release public key and the image's identity.
# Inputs: KMSNODE_WHEELS, KMSNODE_PUBKEY, KMSNODE_RECIPE, KMSNODE_PRODUCT, KMSNODE_VERSION,
# KMSNODE_VARIANT (production | test), KMSNODE_INSECURE_NO_TPM (1 or empty), KMSNODE_EXTRA_TREE
# (a folder copied over the root last, or empty). Needs /dev/null and /proc only for pip;
# bind-mounted by image/build.py.
set -eu
R="$1"
W="$KMSNODE_WHEELS"; r="$KMSNODE_RECIPE"
# Python venv with the node and its pinned wheels, installed offline.
cp -r "$W" "$R/tmp/wheels"
chroot "$R" python3 -m venv --without-pip /opt/kmsnode
chroot "$R" sh -c 'PIP=$(ls /tmp/wheels/pip-*.whl)
  /opt/kmsnode/bin/python "$PIP/pip" install -q --no-index --no-cache-dir \
    --disable-pip-version-check --find-links /tmp/wheels kmsnode'
rm -rf "$R/tmp/wheels"
# The root is immutable (dm-verity): byte code that never re-checks its source (pip's
# SOURCE_DATE_EPOCH default, checked-hash, hashes every source file at every import).
chroot "$R" /opt/kmsnode/bin/python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
    /opt/kmsnode/lib >/dev/null
# Recipe: users, units, udev rules, mounts, network, kernel settings, update key.
install -D -m 0644 "$r/kmsnode.sysusers" "$R/usr/lib/sysusers.d/kmsnode.conf"
chroot "$R" systemd-sysusers /usr/lib/sysusers.d/kmsnode.conf
U="$R/usr/lib/systemd/system"
for unit in kmsnode kmsnode-state kmsnode-init kmsnode-provision kmsnode-health \
            kmsnode-mark-good kmsnode-firewall; do
    install -D -m 0644 "$r/$unit.service" "$U/$unit.service"
done
install -D -m 0755 "$r/kmsnode-state" "$R/usr/libexec/kmsnode/kmsnode-state"
install -D -m 0644 "$r/journal-flush.conf" "$U/systemd-journal-flush.service.d/50-kmsnode.conf"
install -D -m 0644 "$r/70-kmsnode-hsm.rules" "$R/usr/lib/udev/rules.d/70-kmsnode-hsm.rules"
install -D -m 0644 "$r/80-kmsnode.network" "$R/usr/lib/systemd/network/80-kmsnode.network"
install -D -m 0644 "$r/90-kmsnode.conf" "$R/usr/lib/sysctl.d/90-kmsnode.conf"
install -D -m 0644 "$r/journald.conf" "$R/usr/lib/systemd/journald.conf.d/50-kmsnode.conf"
install -D -m 0644 "$r/timesyncd.conf" "$R/usr/lib/systemd/timesyncd.conf.d/50-kmsnode.conf"
install -D -m 0644 "$r/fstab" "$R/etc/fstab"
install -D -m 0644 "$KMSNODE_PUBKEY" "$R/usr/share/kmsnode/update-keys/release.pub"
install -d -m 0755 "$R/var/lib/kmsnode" "$R/efi"
echo kmsnode > "$R/etc/hostname"
# Machine id: an empty file the initramfs binds the disk's own id onto (see initrd-init).
rm -f "$R/etc/machine-id" "$R/var/lib/dbus/machine-id"
: > "$R/etc/machine-id"
# The version on the box.
OSREL="$R/usr/lib/os-release"
sed -i '/^IMAGE_ID=/d; /^IMAGE_VERSION=/d; /^VARIANT_ID=/d' "$OSREL"
printf 'IMAGE_ID=%s\nIMAGE_VERSION=%s\nVARIANT_ID=%s\n' \
    "$KMSNODE_PRODUCT" "$KMSNODE_VERSION" "$KMSNODE_VARIANT" >> "$OSREL"
install -d -m 0755 "$R/usr/lib/kmsnode"
echo "$KMSNODE_VARIANT" > "$R/usr/lib/kmsnode/variant"
if [ -n "${KMSNODE_INSECURE_NO_TPM:-}" ]; then
    echo "built with --insecure-no-tpm" > "$R/usr/lib/kmsnode/insecure-no-tpm"
fi
chroot "$R" systemctl enable kmsnode.service kmsnode-state.service kmsnode-init.service \
    kmsnode-provision.service kmsnode-health.service kmsnode-mark-good.service \
    kmsnode-firewall.service systemd-networkd.service systemd-timesyncd.service
chroot "$R" systemctl mask nftables.service 2>/dev/null || true
if [ -n "${KMSNODE_EXTRA_TREE:-}" ]; then
    cp -a "$KMSNODE_EXTRA_TREE/." "$R/"
fi
