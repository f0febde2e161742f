//! The routes the simulator serves, with their parameters (syntax: [`crate::spec`]).
//!
//! Declared by hand from what PVE 9.2.3 accepts; `tests/schema_contract.rs` compares every
//! line with the official schema, so a typo or a drifted name fails the build's tests.
//!
//! Path placeholders (`{node}`, `{vmid}`, ...) are parameters too, declared like any other.
//! PVE usually marks them required, but not always: see the notes at the routes concerned.
//!
//! `count=` of an indexed `NAME[n]` parameter is the number of wire names PVE registers
//! (`net0..net31` is `count=32`). The schema states it in prose for some (`n is 0 to 30`), not
//! at all for `hostpci`, `ipconfig`, `net`, `numa`, `unused` and `virtiofs`; those counts are
//! qemu-server's `$MAX_*` constants.

use crate::spec::RouteSpec;

/// The VM config keys shared by `POST /nodes/{node}/qemu` (create) and both
/// `/nodes/{node}/qemu/{vmid}/config` setters (`POST` async, `PUT` sync); each route appends
/// its own extras.
macro_rules! vm_config_keys {
    () => {
        r"
        acpi?                boolean
        affinity?            string  format=pve-cpuset
        agent?               string  format=propstring
        allow-ksm?           boolean
        amd-sev?             string  format=pve-qemu-sev-fmt
        arch?                enum=x86_64|aarch64
        args?                string
        audio0?              string  format=propstring
        autostart?           boolean
        balloon?             integer min=0
        bios?                enum=seabios|ovmf
        boot?                string  format=pve-qm-boot
        bootdisk?            string  format=pve-qm-bootdisk pattern=(ide|sata|scsi|virtio)\d+
        cdrom?               string  format=pve-qm-ide
        cicustom?            string  format=pve-qm-cicustom
        cipassword?          string
        citype?              enum=configdrive2|nocloud|opennebula
        ciupgrade?           boolean
        ciuser?              string
        cores?               integer min=1
        cpu?                 string  format=pve-vm-cpu-conf
        cpulimit?            number  min=0 max=128
        cpuunits?            integer min=1 max=262144
        description?         string  maxlen=8192
        efidisk0?            string  format=propstring
        force?               boolean
        freeze?              boolean
        hookscript?          string  format=pve-volume-id
        hostpci[n]?          string  format=pve-qm-hostpci count=16
        hotplug?             string  format=pve-hotplug-features
        hugepages?           enum=any|2|1024
        ide[n]?              string  format=propstring count=4
        intel-tdx?           string  format=pve-qemu-tdx-fmt
        ipconfig[n]?         string  format=pve-qm-ipconfig count=32
        ivshmem?             string  format=propstring
        keephugepages?       boolean
        keyboard?            enum=de|de-ch|da|en-gb|en-us|es|fi|fr|fr-be|fr-ca|fr-ch|hu|is|it|ja|lt|mk|nl|no|pl|pt|pt-br|sv|sl|tr
        kvm?                 boolean
        localtime?           boolean
        lock?                enum=backup|clone|create|migrate|rollback|snapshot|snapshot-delete|suspending|suspended
        machine?             string  format=propstring
        memory?              string  format=propstring
        migrate_downtime?    number  min=0
        migrate_speed?       integer min=0
        name?                string  format=dns-name
        nameserver?          string  format=address-list
        net[n]?              string  format=propstring count=32
        node                 string  format=pve-node
        numa?                boolean
        numa[n]?             string  format=propstring count=8
        onboot?              boolean
        ostype?              enum=other|wxp|w2k|w2k3|w2k8|wvista|win7|win8|win10|win11|l24|l26|solaris
        parallel[n]?         string  count=3 pattern=/dev/parport\d+|/dev/usb/lp\d+
        protection?          boolean
        reboot?              boolean
        rng0?                string  format=pve-qm-rng
        sata[n]?             string  format=propstring count=6
        scsi[n]?             string  format=propstring count=31
        scsihw?              enum=lsi|lsi53c810|virtio-scsi-pci|virtio-scsi-single|megasas|pvscsi
        searchdomain?        string
        serial[n]?           string  count=4 pattern=(/dev/[^,]+|socket)
        shares?              integer min=0 max=50000
        smbios1?             string  maxlen=512 format=pve-qm-smbios1
        smp?                 integer min=1
        sockets?             integer min=1
        spice_enhancements?  string  format=propstring
        sshkeys?             string  format=urlencoded
        startdate?           string  pattern=(now|\d{4}-\d{1,2}-\d{1,2}(T\d{1,2}:\d{1,2}:\d{1,2})?)
        startup?             string  format=pve-startup-order
        tablet?              boolean
        tags?                string  format=pve-tag-list
        tdf?                 boolean
        template?            boolean
        tpmstate0?           string  format=propstring
        unused[n]?           string  format=propstring count=256
        # The description says n is 0 to 4, but qemu-server registers usb0..usb13
        # ($MAX_USB_DEVICES = 14); indices from 5 need machine >= 7.1, a semantic check.
        usb[n]?              string  format=propstring count=14
        vcpus?               integer min=1
        vga?                 string  format=propstring
        virtio[n]?           string  format=propstring count=16
        virtiofs[n]?         string  format=propstring count=10
        vmgenid?             string  pattern=(?:[a-fA-F0-9]{8}(?:-[a-fA-F0-9]{4}){3}-[a-fA-F0-9]{12}|[01])
        vmid                 integer min=100 max=999999999 format=pve-vmid
        vmstatestorage?      string  format=pve-storage-id
        watchdog?            string  format=pve-qm-watchdog
        "
    };
}

/// The disks a VM can have, as the `disk` enum of `template` and `resize` spells them.
macro_rules! vm_disk_enum {
    () => {
        concat!(
            "ide0|ide1|ide2|ide3|",
            "scsi0|scsi1|scsi2|scsi3|scsi4|scsi5|scsi6|scsi7|scsi8|scsi9|scsi10|scsi11|scsi12|",
            "scsi13|scsi14|scsi15|scsi16|scsi17|scsi18|scsi19|scsi20|scsi21|scsi22|scsi23|",
            "scsi24|scsi25|scsi26|scsi27|scsi28|scsi29|scsi30|",
            "virtio0|virtio1|virtio2|virtio3|virtio4|virtio5|virtio6|virtio7|virtio8|virtio9|",
            "virtio10|virtio11|virtio12|virtio13|virtio14|virtio15|",
            "sata0|sata1|sata2|sata3|sata4|sata5|",
            "efidisk0|tpmstate0",
        )
    };
}

/// The fields of a VM firewall rule (and the path placeholders), shared by create
/// (`POST .../rules`, where `action` and `type` are required) and update
/// (`PUT .../rules/{pos}`, where they are optional).
macro_rules! fw_rule_keys {
    () => {
        r"
        comment?    string
        dest?       string  maxlen=512 format=pve-fw-addr-spec
        digest?     string  maxlen=64
        dport?      string  format=pve-fw-dport-spec
        # An integer, not a boolean: PVE stores the rule's enable flag as a number.
        enable?     integer min=0
        icmp-type?  string  format=pve-fw-icmp-type-spec
        iface?      string  minlen=2 maxlen=20 format=pve-iface
        log?        enum=emerg|alert|crit|err|warning|notice|info|debug|nolog
        macro?      string  maxlen=128
        node        string  format=pve-node
        # `pos` is in the path of `.../rules/{pos}` but PVE declares it optional everywhere.
        pos?        integer min=0
        proto?      string  format=pve-fw-protocol-spec
        source?     string  maxlen=512 format=pve-fw-addr-spec
        sport?      string  format=pve-fw-sport-spec
        vmid        integer min=100 max=999999999 format=pve-vmid
        "
    };
}

/// The keys every SDN zone plugin type accepts on create and update (the schema keeps all
/// plugins' keys in one flat set; which `type` uses which key is not encoded).
macro_rules! sdn_zone_keys {
    () => {
        r"
        advertise-subnets?            boolean
        bridge?                       string
        bridge-disable-mac-learning?  boolean
        controller?                   string
        dhcp?                         enum=dnsmasq
        disable-arp-nd-suppression?   boolean
        dns?                          string
        dnszone?                      string  format=dns-name
        dp-id?                        integer
        exitnodes?                    string  format=pve-node-list
        exitnodes-local-routing?      boolean
        exitnodes-primary?            string  format=pve-node
        fabric?                       string  format=pve-sdn-fabric-id
        ipam?                         string
        lock-token?                   string
        mac?                          string  format=mac-addr
        mtu?                          integer
        nodes?                        string  format=pve-node-list
        peers?                        string  format=ip-list
        reversedns?                   string
        rt-import?                    string  format=pve-sdn-bgp-rt-list
        # Array limits apply to each item (here: each controller ID).
        secondary-controllers?        array   items=string minlen=2 maxlen=64 pattern=[a-zA-Z][a-zA-Z0-9_-]*[a-zA-Z0-9]
        tag?                          integer min=0
        vlan-protocol?                enum=802.1q|802.1ad
        vrf-vxlan?                    integer min=1 max=16777215
        # 65536, not 65535: PVE's own limit, one past the last UDP port.
        vxlan-port?                   integer min=1 max=65536
        zone                          string  minlen=2 maxlen=8 pattern=[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]
        "
    };
}

/// Every served route.
pub static ROUTES: &[RouteSpec] = &[
    // ---- access, version, cluster, nodes ---------------------------------------------------
    RouteSpec {
        method: "POST",
        path: "/access/ticket",
        params: "
        new-format?     boolean
        otp?            string
        password        string
        path?           string  maxlen=64
        privs?          string  maxlen=64 format=pve-priv-list
        realm?          string  maxlen=32 format=pve-realm
        tfa-challenge?  string
        username        string  maxlen=64
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/version",
        params: "",
    },
    // `userid` is a user or token id (`user@realm` or `user@realm!token`).
    RouteSpec {
        method: "GET",
        path: "/access/permissions",
        params: r"
        path?    string
        userid?  string  pattern=(?^:^(?^:[^\s:/]+)\@(?^:[A-Za-z][A-Za-z0-9\.\-_]+)(?:!(?^:[A-Za-z][A-Za-z0-9\.\-_]+))?$)
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/cluster/nextid",
        params: "
        vmid?  integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/cluster/resources",
        params: "
        type?  enum=vm|storage|node|sdn
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/cluster/tasks",
        params: "",
    },
    RouteSpec {
        method: "GET",
        path: "/nodes",
        params: "",
    },
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/status",
        params: "
        node  string  format=pve-node
        ",
    },
    // ---- VMs ---------------------------------------------------------------------------------
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/qemu",
        params: "
        full?  boolean
        node   string  format=pve-node
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu",
        // `vmid` (in the shared keys) is a required body parameter here, not a placeholder.
        params: concat!(
            vm_config_keys!(),
            "
        archive?                 string  maxlen=255
        bwlimit?                 integer min=0
        ha-managed?              boolean
        import-working-storage?  string  format=pve-storage-id
        live-restore?            boolean
        pool?                    string  format=pve-poolid
        start?                   boolean
        storage?                 string  format=pve-storage-id
        unique?                  boolean
        "
        ),
    },
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/config",
        params: "
        current?   boolean
        node       string  format=pve-node
        snapshot?  string  maxlen=40 format=pve-configid
        vmid       integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/config",
        params: concat!(
            vm_config_keys!(),
            "
        background_delay?        integer min=1 max=30
        delete?                  string  format=pve-configid-list
        digest?                  string  maxlen=40
        import-working-storage?  string  format=pve-storage-id
        revert?                  string  format=pve-configid-list
        skiplock?                boolean
        "
        ),
    },
    RouteSpec {
        method: "PUT",
        path: "/nodes/{node}/qemu/{vmid}/config",
        // The synchronous setter: no `background_delay`, and no `import-working-storage`
        // because it cannot run a disk import.
        params: concat!(
            vm_config_keys!(),
            "
        delete?    string  format=pve-configid-list
        digest?    string  maxlen=40
        revert?    string  format=pve-configid-list
        skiplock?  boolean
        "
        ),
    },
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/pending",
        params: "
        node  string  format=pve-node
        vmid  integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "DELETE",
        path: "/nodes/{node}/qemu/{vmid}",
        params: "
        destroy-unreferenced-disks?  boolean
        node                         string  format=pve-node
        purge?                       boolean
        skiplock?                    boolean
        vmid                         integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/clone",
        params: "
        bwlimit?      integer min=0
        description?  string
        format?       enum=raw|qcow2|vmdk
        full?         boolean
        name?         string  format=dns-name
        newid         integer min=100 max=999999999 format=pve-vmid
        node          string  format=pve-node
        pool?         string  format=pve-poolid
        snapname?     string  maxlen=40 format=pve-configid
        storage?      string  format=pve-storage-id
        target?       string  format=pve-node
        vmid          integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/template",
        params: concat!(
            "
        disk?  enum=",
            vm_disk_enum!(),
            "
        node   string  format=pve-node
        vmid   integer min=100 max=999999999 format=pve-vmid
        "
        ),
    },
    RouteSpec {
        method: "PUT",
        path: "/nodes/{node}/qemu/{vmid}/resize",
        params: concat!(
            "
        digest?    string  maxlen=40
        disk       enum=",
            vm_disk_enum!(),
            r"
        node       string  format=pve-node
        size       string  pattern=\+?\d+(\.\d+)?[KMGT]?
        skiplock?  boolean
        vmid       integer min=100 max=999999999 format=pve-vmid
        "
        ),
    },
    // ---- VM power ----------------------------------------------------------------------------
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/status/current",
        params: "
        node  string  format=pve-node
        vmid  integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/status/start",
        params: r"
        force-cpu?             string
        machine?               string  format=propstring
        migratedfrom?          string  format=pve-node
        migration_network?     string  format=CIDR
        migration_type?        enum=secure|insecure
        nets-host-mtu?         string  pattern=net\d+=\d+(,net\d+=\d+)*
        node                   string  format=pve-node
        skiplock?              boolean
        stateuri?              string  maxlen=128
        targetstorage?         string  format=storage-pair-list
        timeout?               integer min=0
        vmid                   integer min=100 max=999999999 format=pve-vmid
        with-conntrack-state?  boolean
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/status/stop",
        params: "
        keepActive?         boolean
        migratedfrom?       string  format=pve-node
        node                string  format=pve-node
        overrule-shutdown?  boolean
        skiplock?           boolean
        timeout?            integer min=0
        vmid                integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/status/shutdown",
        params: "
        forceStop?   boolean
        keepActive?  boolean
        node         string  format=pve-node
        skiplock?    boolean
        timeout?     integer min=0
        vmid         integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/status/reboot",
        params: "
        node      string  format=pve-node
        timeout?  integer min=0
        vmid      integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/status/reset",
        params: "
        node       string  format=pve-node
        skiplock?  boolean
        vmid       integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/status/suspend",
        params: "
        node           string  format=pve-node
        skiplock?      boolean
        statestorage?  string  format=pve-storage-id
        todisk?        boolean
        vmid           integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/status/resume",
        params: "
        nocheck?   boolean
        node       string  format=pve-node
        skiplock?  boolean
        vmid       integer min=100 max=999999999 format=pve-vmid
        ",
    },
    // ---- VM snapshots ------------------------------------------------------------------------
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/snapshot",
        params: "
        node  string  format=pve-node
        vmid  integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/snapshot",
        params: "
        description?  string
        node          string  format=pve-node
        snapname      string  maxlen=40 format=pve-configid
        vmid          integer min=100 max=999999999 format=pve-vmid
        vmstate?      boolean
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback",
        params: "
        node      string  format=pve-node
        snapname  string  maxlen=40 format=pve-configid
        start?    boolean
        vmid      integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "DELETE",
        path: "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}",
        params: "
        force?    boolean
        node      string  format=pve-node
        snapname  string  maxlen=40 format=pve-configid
        vmid      integer min=100 max=999999999 format=pve-vmid
        ",
    },
    // ---- guest agent -------------------------------------------------------------------------
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/agent/ping",
        params: "
        node  string  format=pve-node
        vmid  integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/agent/exec",
        params: "
        command      array   items=string
        input-data?  string  maxlen=65536
        node         string  format=pve-node
        vmid         integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/agent/exec-status",
        params: "
        node  string  format=pve-node
        pid   integer
        vmid  integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/agent/file-read",
        params: "
        count?   integer min=1 max=16777216
        decode?  boolean
        file     string
        node     string  format=pve-node
        offset?  integer min=0
        vmid     integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/agent/file-write",
        params: "
        content  string  maxlen=61440
        encode?  boolean
        file     string
        node     string  format=pve-node
        vmid     integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/agent/get-osinfo",
        params: "
        node  string  format=pve-node
        vmid  integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces",
        params: "
        node  string  format=pve-node
        vmid  integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/agent/get-time",
        params: "
        node  string  format=pve-node
        vmid  integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/agent/get-host-name",
        params: "
        node  string  format=pve-node
        vmid  integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/agent/info",
        params: "
        node  string  format=pve-node
        vmid  integer min=100 max=999999999 format=pve-vmid
        ",
    },
    // ---- tasks -------------------------------------------------------------------------------
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/tasks/{upid}/status",
        params: "
        node  string  format=pve-node
        upid  string
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/tasks/{upid}/log",
        params: "
        download?  boolean
        limit?     integer min=0
        node       string  format=pve-node
        start?     integer min=0
        upid       string
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/tasks",
        params: "
        errors?        boolean
        limit?         integer min=0
        node           string  format=pve-node
        since?         integer
        source?        enum=archive|active|all
        start?         integer min=0
        statusfilter?  string  format=pve-task-status-type-list
        typefilter?    string
        until?         integer
        userfilter?    string
        vmid?          integer min=100 max=999999999 format=pve-vmid
        ",
    },
    // ---- storage -----------------------------------------------------------------------------
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/storage",
        params: "
        content?  string  format=pve-storage-content-list
        enabled?  boolean
        format?   boolean
        node      string  format=pve-node
        storage?  string  format=pve-storage-id
        target?   string  format=pve-node
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/storage/{storage}/content",
        params: "
        content?  string  format=pve-storage-content
        node      string  format=pve-node
        storage   string  format=pve-storage-id
        vmid?     integer min=100 max=999999999 format=pve-vmid
        ",
    },
    // `storage` is in the path yet optional on every `content/{volume}` route: `volume` may be
    // a full volume ID (`local:iso/x.iso`) that names its storage itself. It takes the rest of
    // the path, `/` included (see `spec::GREEDY`).
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/storage/{storage}/content/{volume}",
        params: "
        node      string  format=pve-node
        storage?  string  format=pve-storage-id
        volume    string
        ",
    },
    RouteSpec {
        method: "PUT",
        path: "/nodes/{node}/storage/{storage}/content/{volume}",
        params: "
        node        string  format=pve-node
        notes?      string
        protected?  boolean
        storage?    string  format=pve-storage-id
        volume      string
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/storage/{storage}/content/{volume}",
        params: "
        node          string  format=pve-node
        storage?      string  format=pve-storage-id
        target        string
        target_node?  string  format=pve-node
        volume        string
        ",
    },
    RouteSpec {
        method: "DELETE",
        path: "/nodes/{node}/storage/{storage}/content/{volume}",
        params: "
        delay?    integer min=1 max=30
        node      string  format=pve-node
        storage?  string  format=pve-storage-id
        volume    string
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/storage/{storage}/upload",
        params: "
        checksum?            string
        checksum-algorithm?  enum=md5|sha1|sha224|sha256|sha384|sha512
        content              enum=iso|vztmpl|import format=pve-storage-content
        filename             string  maxlen=255
        node                 string  format=pve-node
        storage              string  format=pve-storage-id
        tmpfilename?         string  pattern=/var/tmp/pveupload-[0-9a-f]+
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/storage/{storage}/download-url",
        // `compression` has `enum: null` in the schema (the list is only known at runtime),
        // so PVE's parameter check takes any string; so do we.
        params: "
        checksum?             string
        checksum-algorithm?   enum=md5|sha1|sha224|sha256|sha384|sha512
        compression?          string
        content               enum=iso|vztmpl|import format=pve-storage-content
        filename              string  maxlen=255
        node                  string  format=pve-node
        storage               string  format=pve-storage-id
        url                   string  pattern=https?://.*
        verify-certificates?  boolean
        ",
    },
    // ---- pools -------------------------------------------------------------------------------
    RouteSpec {
        method: "GET",
        path: "/pools",
        params: "
        poolid?  string  format=pve-poolid
        type?    enum=qemu|lxc|storage
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/pools",
        params: "
        comment?  string
        poolid    string  format=pve-poolid
        ",
    },
    RouteSpec {
        method: "PUT",
        path: "/pools",
        params: "
        allow-move?  boolean
        comment?     string
        delete?      boolean
        poolid       string  format=pve-poolid
        storage?     string  format=pve-storage-id-list
        vms?         string  format=pve-vmid-list
        ",
    },
    RouteSpec {
        method: "DELETE",
        path: "/pools",
        params: "
        poolid  string  format=pve-poolid
        ",
    },
    // ---- SDN ---------------------------------------------------------------------------------
    RouteSpec {
        method: "GET",
        path: "/cluster/sdn",
        params: "",
    },
    RouteSpec {
        method: "PUT",
        path: "/cluster/sdn",
        params: "
        lock-token?    string
        release-lock?  boolean
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/cluster/sdn/zones",
        params: "
        pending?  boolean
        running?  boolean
        type?     enum=evpn|faucet|qinq|simple|vlan|vxlan
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/cluster/sdn/zones",
        // `type` is an enum and a `pve-configid` at once (the plugin type doubles as an ID).
        params: concat!(
            sdn_zone_keys!(),
            "
        type  enum=evpn|faucet|qinq|simple|vlan|vxlan format=pve-configid
        "
        ),
    },
    RouteSpec {
        method: "GET",
        path: "/cluster/sdn/zones/{zone}",
        params: "
        pending?  boolean
        running?  boolean
        zone      string  minlen=2 maxlen=8 pattern=[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]
        ",
    },
    RouteSpec {
        method: "PUT",
        path: "/cluster/sdn/zones/{zone}",
        params: concat!(
            sdn_zone_keys!(),
            "
        delete?  string  maxlen=4096 format=pve-configid-list
        digest?  string  maxlen=64
        "
        ),
    },
    RouteSpec {
        method: "DELETE",
        path: "/cluster/sdn/zones/{zone}",
        params: "
        lock-token?  string
        zone         string  minlen=2 maxlen=8 pattern=[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/cluster/sdn/vnets",
        params: "
        pending?  boolean
        running?  boolean
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/cluster/sdn/vnets",
        // `alias` uses Perl's `(?^i:...)`; `spec::full_match` rewrites it for Rust's regex.
        params: r"
        alias?          string  maxlen=256 pattern=(?^i:[\(\)-_.\w\d\s]{0,256})
        isolate-ports?  boolean
        lock-token?     string
        tag?            integer min=1 max=16777215
        type?           enum=vnet
        vlanaware?      boolean
        vnet            string  minlen=2 maxlen=8 pattern=[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]
        zone            string
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/cluster/sdn/vnets/{vnet}",
        params: "
        pending?  boolean
        running?  boolean
        vnet      string  minlen=2 maxlen=8 pattern=[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]
        ",
    },
    RouteSpec {
        method: "PUT",
        path: "/cluster/sdn/vnets/{vnet}",
        params: r"
        alias?          string  maxlen=256 pattern=(?^i:[\(\)-_.\w\d\s]{0,256})
        delete?         string  maxlen=4096 format=pve-configid-list
        digest?         string  maxlen=64
        isolate-ports?  boolean
        lock-token?     string
        tag?            integer min=1 max=16777215
        vlanaware?      boolean
        vnet            string  minlen=2 maxlen=8 pattern=[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]
        zone?           string
        ",
    },
    RouteSpec {
        method: "DELETE",
        path: "/cluster/sdn/vnets/{vnet}",
        params: "
        lock-token?  string
        vnet         string  minlen=2 maxlen=8 pattern=[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/cluster/sdn/vnets/{vnet}/subnets",
        params: "
        pending?  boolean
        running?  boolean
        vnet      string  minlen=2 maxlen=8 pattern=[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/cluster/sdn/vnets/{vnet}/subnets",
        // Unlike the other subnet routes, `vnet` is a plain string here (no length, no pattern).
        params: "
        dhcp-dns-server?  string  format=ip
        dhcp-range?       array   items=string format=pve-sdn-dhcp-range
        dnszoneprefix?    string  format=dns-name
        gateway?          string  format=ip
        lock-token?       string
        snat?             boolean
        subnet            string  format=pve-sdn-subnet-id
        type              enum=subnet
        vnet              string
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/cluster/sdn/vnets/{vnet}/subnets/{subnet}",
        params: "
        pending?  boolean
        running?  boolean
        subnet    string  format=pve-sdn-subnet-id
        vnet      string  minlen=2 maxlen=8 pattern=[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]
        ",
    },
    RouteSpec {
        method: "PUT",
        path: "/cluster/sdn/vnets/{vnet}/subnets/{subnet}",
        // `vnet` is in the path yet optional and unchecked here: that is how PVE declares it.
        params: "
        delete?           string  maxlen=4096 format=pve-configid-list
        dhcp-dns-server?  string  format=ip
        dhcp-range?       array   items=string format=pve-sdn-dhcp-range
        digest?           string  maxlen=64
        dnszoneprefix?    string  format=dns-name
        gateway?          string  format=ip
        lock-token?       string
        snat?             boolean
        subnet            string  format=pve-sdn-subnet-id
        vnet?             string
        ",
    },
    RouteSpec {
        method: "DELETE",
        path: "/cluster/sdn/vnets/{vnet}/subnets/{subnet}",
        params: "
        lock-token?  string
        subnet       string  format=pve-sdn-subnet-id
        vnet         string  minlen=2 maxlen=8 pattern=[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]
        ",
    },
    // ---- VM firewall -------------------------------------------------------------------------
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/firewall/options",
        params: "
        node  string  format=pve-node
        vmid  integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "PUT",
        path: "/nodes/{node}/qemu/{vmid}/firewall/options",
        params: "
        delete?         string  format=pve-configid-list
        dhcp?           boolean
        digest?         string  maxlen=64
        enable?         boolean
        ipfilter?       boolean
        log_level_in?   enum=emerg|alert|crit|err|warning|notice|info|debug|nolog
        log_level_out?  enum=emerg|alert|crit|err|warning|notice|info|debug|nolog
        macfilter?      boolean
        ndp?            boolean
        node            string  format=pve-node
        policy_in?      enum=ACCEPT|REJECT|DROP
        policy_out?     enum=ACCEPT|REJECT|DROP
        radv?           boolean
        vmid            integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/firewall/rules",
        params: "
        node  string  format=pve-node
        vmid  integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/firewall/rules",
        params: concat!(
            fw_rule_keys!(),
            r"
        action  string  minlen=2 maxlen=20 pattern=[A-Za-z][A-Za-z0-9\-\_]+
        type    enum=in|out|forward|group
        "
        ),
    },
    RouteSpec {
        method: "GET",
        path: "/nodes/{node}/qemu/{vmid}/firewall/rules/{pos}",
        params: "
        node  string  format=pve-node
        pos?  integer min=0
        vmid  integer min=100 max=999999999 format=pve-vmid
        ",
    },
    RouteSpec {
        method: "PUT",
        path: "/nodes/{node}/qemu/{vmid}/firewall/rules/{pos}",
        params: concat!(
            fw_rule_keys!(),
            r"
        action?  string  minlen=2 maxlen=20 pattern=[A-Za-z][A-Za-z0-9\-\_]+
        delete?  string  format=pve-configid-list
        moveto?  integer min=0
        type?    enum=in|out|forward|group
        "
        ),
    },
    RouteSpec {
        method: "DELETE",
        path: "/nodes/{node}/qemu/{vmid}/firewall/rules/{pos}",
        params: "
        digest?  string  maxlen=64
        node     string  format=pve-node
        pos?     integer min=0
        vmid     integer min=100 max=999999999 format=pve-vmid
        ",
    },
    // ---- SDN IPAM and cluster firewall (pve-sdn) ----------------------------------------------
    RouteSpec {
        method: "GET",
        path: "/cluster/sdn/ipams/{ipam}/status",
        params: "
        ipam  string  minlen=2 pattern=[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/cluster/firewall/options",
        params: "",
    },
    RouteSpec {
        method: "PUT",
        path: "/cluster/firewall/options",
        params: "
        delete?          string  format=pve-configid-list
        digest?          string  maxlen=64
        ebtables?        boolean
        enable?          integer min=0
        log_ratelimit?   string  format=propstring
        policy_forward?  enum=ACCEPT|DROP
        policy_in?       enum=ACCEPT|REJECT|DROP
        policy_out?      enum=ACCEPT|REJECT|DROP
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/cluster/firewall/groups",
        params: "",
    },
    RouteSpec {
        method: "POST",
        path: "/cluster/firewall/groups",
        params: r"
        comment?  string
        digest?   string  maxlen=64
        group     string  minlen=2 maxlen=18 pattern=[A-Za-z][A-Za-z0-9\-\_]+
        rename?   string  minlen=2 maxlen=18 pattern=[A-Za-z][A-Za-z0-9\-\_]+
        ",
    },
    RouteSpec {
        method: "GET",
        path: "/cluster/firewall/groups/{group}",
        params: r"
        group  string  minlen=2 maxlen=18 pattern=[A-Za-z][A-Za-z0-9\-\_]+
        ",
    },
    RouteSpec {
        method: "POST",
        path: "/cluster/firewall/groups/{group}",
        params: r"
        action      string  minlen=2 maxlen=20 pattern=[A-Za-z][A-Za-z0-9\-\_]+
        comment?    string
        dest?       string  maxlen=512 format=pve-fw-addr-spec
        digest?     string  maxlen=64
        dport?      string  format=pve-fw-dport-spec
        enable?     integer min=0
        group       string  minlen=2 maxlen=18 pattern=[A-Za-z][A-Za-z0-9\-\_]+
        icmp-type?  string  format=pve-fw-icmp-type-spec
        iface?      string  minlen=2 maxlen=20 format=pve-iface
        log?        enum=emerg|alert|crit|err|warning|notice|info|debug|nolog
        macro?      string  maxlen=128
        pos?        integer min=0
        proto?      string  format=pve-fw-protocol-spec
        source?     string  maxlen=512 format=pve-fw-addr-spec
        sport?      string  format=pve-fw-sport-spec
        type        enum=in|out|forward|group
        ",
    },
    RouteSpec {
        method: "DELETE",
        path: "/cluster/firewall/groups/{group}",
        params: r"
        group  string  minlen=2 maxlen=18 pattern=[A-Za-z][A-Za-z0-9\-\_]+
        ",
    },
    RouteSpec {
        method: "DELETE",
        path: "/cluster/firewall/groups/{group}/{pos}",
        // `pos` is in the path but declared optional, as everywhere in the firewall API.
        params: r"
        digest?  string  maxlen=64
        group    string  minlen=2 maxlen=18 pattern=[A-Za-z][A-Za-z0-9\-\_]+
        pos?     integer min=0
        ",
    },
    // ---- end pve-sdn block ------------------------------------------------------------------
];
