"""The emulator's demo directory: two fictional tenants with users and photos."""
from __future__ import annotations

import hashlib
import struct
import uuid
import zlib
from dataclasses import dataclass, field


@dataclass
class User:
    """A directory user; `profile` holds the Graph properties of /me."""

    oid: str
    tid: str
    upn: str
    mail: str | None
    role: str  # "admin" or "member"
    profile: dict
    photo: bytes | None = None
    photo_type: str | None = None

    @property
    def display_name(self) -> str:
        return self.profile.get("displayName") or self.upn

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def mail_nickname(self) -> str:
        """The mail alias (Graph's mailNickname, Entra's default source of SCIM externalId): the UPN's local part."""
        return self.profile.get("mailNickname") or self.upn.partition("@")[0]


@dataclass
class Group:
    """A security group; `members` lists user oids (no nesting)."""

    id: str
    name: str
    members: list[str] = field(default_factory=list)


@dataclass
class Tenant:
    """A tenant; the switches here are defaults, the emulator's store overrides them."""

    tid: str
    name: str
    domains: list[str]
    users: list[User] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    users_may_consent: bool = True
    assignment_required: bool = False
    region: str = "NA"  # discovery's tenant_region_scope

    @property
    def default_domain(self) -> str:
        return self.domains[0]


class Directory:
    """Look-ups over the demo tenants."""

    def __init__(self, tenants: list[Tenant]) -> None:
        self.tenants = tenants

    @property
    def users(self) -> list[User]:
        return [u for t in self.tenants for u in t.users]

    def tenant(self, tid_or_domain: str) -> Tenant | None:
        """Find a tenant by GUID or verified domain (case-insensitive)."""
        key = (tid_or_domain or "").strip().lower()
        for t in self.tenants:
            if key == t.tid or key in t.domains:
                return t
        return None

    def user_by_upn(self, upn: str) -> User | None:
        key = (upn or "").strip().lower()
        return next((u for u in self.users if u.upn.lower() == key), None)

    def user_by_oid(self, oid: str) -> User | None:
        return next((u for u in self.users if u.oid == oid), None)

    def group(self, tid: str, id_or_name: str) -> Group | None:
        """A group of the tenant by id or display name (case-insensitive)."""
        tenant = self.tenant(tid)
        key = (id_or_name or "").strip().lower()
        return next((g for g in (tenant.groups if tenant else []) if key in (g.id, g.name.lower())), None)

    def groups_of(self, user: User) -> list[Group]:
        tenant = self.tenant(user.tid)
        return [g for g in (tenant.groups if tenant else []) if user.oid in g.members]

    def email_domain_verified(self, user: User) -> bool:
        """True when the user's mail is in one of its tenant's verified domains (xms_edov)."""
        if not user.mail:
            return False
        tenant = self.tenant(user.tid)
        return user.mail.rsplit("@", 1)[-1].lower() in (tenant.domains if tenant else [])


def make_png(seed: str, size: int = 96) -> bytes:
    """Draw a deterministic two-colour striped square as a PNG with the stdlib only."""
    digest = hashlib.sha256(seed.encode()).digest()
    fg = bytes(64 + b % 160 for b in digest[0:3])
    bg = bytes(200 + b % 56 for b in digest[3:6])
    stripe = 8 + digest[6] % 8
    rows = []
    for y in range(size):
        row = bytearray(b"\x00")  # filter type 0 (none) for each scanline
        for x in range(size):
            row += fg if ((x + y) // stripe) % 2 == 0 else bg
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b""))


def _user(tid: str, oid: str, upn: str, role: str, given: str, surname: str, job: str,
          company: str, department: str, address: dict, *, mail: str | None = None,
          phone: str = "+1 555 0100", mobile: str | None = None, office: str = "Building 1",
          language: str = "en-US", photo: bool = True) -> User:
    mail = mail or upn
    profile = {
        "displayName": f"{given} {surname}",
        "givenName": given,
        "surname": surname,
        "jobTitle": job,
        "companyName": company,
        "department": department,
        "businessPhones": [phone],
        "mobilePhone": mobile,
        "officeLocation": office,
        "preferredLanguage": language,
        "mail": mail,
        "userPrincipalName": upn,
        **address,
    }
    return User(oid=oid, tid=tid, upn=upn, mail=mail, role=role, profile=profile,
                photo=make_png(oid) if photo else None,
                photo_type="image/png" if photo else None)


GIVEN_NAMES = ("Amara", "Bo", "Carmen", "Dmitri", "Elif", "Femi", "Greta", "Hiro", "Ida", "Jonas", "Keanu", "Lucia",
               "Mateo", "Noor", "Olu", "Pia", "Quentin", "Rosa", "Sami", "Thea")
SURNAMES = ("Andersen", "Bakker", "Costa", "Diallo", "Eriksen", "Fujita", "Garcia", "Horvat", "Ivanova", "Jensen",
            "Kowalski", "Lindqvist", "Moreno", "Nakamura", "Okonkwo", "Petrov", "Quispe", "Rossi", "Singh", "Tanaka")


def numbered_user(tenant: Tenant, n: int) -> User:
    """The tenant's n-th generated member (same n, same person: oid, UPN and names), without a photo."""
    given, surname = GIVEN_NAMES[n % len(GIVEN_NAMES)], SURNAMES[n // len(GIVEN_NAMES) % len(SURNAMES)]
    oid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"emulator:{tenant.tid}:user:{n}"))
    upn = f"{given.lower()}.{surname.lower()}.{n}@{tenant.default_domain}"
    address = {"streetAddress": f"{n} Market Street", "postalCode": f"{10000 + n % 90000}", "usageLocation": "US"}
    return _user(tenant.tid, oid, upn, "member", given, surname, "Associate", tenant.name, "Staff", address,
                 phone=f"+1 555 {n % 10000:04d}", office=f"Floor {n % 12}", photo=False)


NORTHWIND_TID = "6f1c2d3e-4a5b-4c7d-8e9f-0a1b2c3d4e5f"
FABRIKAM_TID = "b2e4d6f8-1a3c-4e5a-9b7d-c9e1f3a5b7d9"


def build_directory() -> Directory:
    """Build a fresh copy of the demo directory (each Emulator owns its own)."""
    nw, fb = NORTHWIND_TID, FABRIKAM_TID
    nw_addr = {"streetAddress": "12 Harbour Road", "city": "Seattle", "state": "WA",
               "postalCode": "98101", "country": "United States", "usageLocation": "US"}
    fb_addr = {"streetAddress": "Kaiserstrasse 7", "city": "Munich", "state": "Bavaria",
               "postalCode": "80331", "country": "Germany", "usageLocation": "DE"}
    northwind = Tenant(nw, "Northwind Traders", ["northwind.example"], [
        _user(nw, "0a6d1c52-7c1e-4d0b-9a57-3e2f1b8c4d01", "admin@northwind.example", "admin",
              "Nadia", "Okafor", "IT Administrator", "Northwind Traders", "IT", nw_addr,
              mobile="+1 555 0101", office="HQ 2.14"),
        _user(nw, "1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02", "lena.fischer@northwind.example",
              "member",
              "Lena", "Fischer", "Sales Manager", "Northwind Traders", "Sales", nw_addr,
              phone="+1 555 0102", mobile="+1 555 0112", office="HQ 3.01"),
        _user(nw, "2c8f3e74-9e3a-4f2d-9c79-5a4b3dae6f03", "omar.haddad@northwind.example", "member",
              "Omar", "Haddad", "Logistics Coordinator", "Northwind Traders", "Operations",
              nw_addr, phone="+1 555 0103", office="Warehouse A", photo=False),
        # Mail outside the tenant's verified domains: ID token carries xms_edov=false.
        _user(nw, "3d9a4f85-af4b-4a3e-8d8a-6b5c4ebf7a04", "jun.park@northwind.example", "member",
              "Jun", "Park", "External Consultant", "Northwind Traders", "Finance", nw_addr,
              mail="jun.park@partners.example", phone="+1 555 0104", language="ko-KR"),
    ], groups=[
        Group("8a1b2c3d-0e1f-4a2b-9c3d-4e5f6a7b8c01", "Sales team", ["1b7e2d63-8d2f-4e1c-8b68-4f3a2c9d5e02"]),
        Group("8a1b2c3d-0e1f-4a2b-9c3d-4e5f6a7b8c02", "Operations",
              ["2c8f3e74-9e3a-4f2d-9c79-5a4b3dae6f03", "3d9a4f85-af4b-4a3e-8d8a-6b5c4ebf7a04"]),
        # For the portal's "Members of this group are admins" (provisioning): Omar, not the tenant admin, whose
        # UPN is the demo portal's break-glass admin (provisioning never adopts a break-glass account).
        Group("8a1b2c3d-0e1f-4a2b-9c3d-4e5f6a7b8c03", "Portal Admins", ["2c8f3e74-9e3a-4f2d-9c79-5a4b3dae6f03"]),
    ])
    fabrikam = Tenant(fb, "Fabrikam Research", ["fabrikam.example", "fabrikamresearch.example"],
                      region="EU", users=[
        _user(fb, "4eab5a96-b05c-4b4f-9e9b-7c6d5fca8b05", "admin@fabrikam.example", "admin",
              "Tomás", "Rivera", "Systems Administrator", "Fabrikam Research", "IT", fb_addr,
              phone="+49 89 5550 100", mobile="+49 151 5550 100", office="Lab 0.01",
              language="de-DE"),
        _user(fb, "5fbc6ba7-c16d-4c5a-8fac-8d7e6adb9c06", "ines.moreau@fabrikam.example", "member",
              "Inès", "Moreau", "Research Scientist", "Fabrikam Research", "Materials", fb_addr,
              phone="+49 89 5550 101", office="Lab 1.12", language="fr-FR"),
        _user(fb, "60cd7cb8-d27e-4d6b-9abd-9e8f7bec0d07", "kwame.mensah@fabrikam.example", "member",
              "Kwame", "Mensah", "Lab Technician", "Fabrikam Research", "Materials", fb_addr,
              phone="+49 89 5550 102", office="Lab 1.14", photo=False),
        # Mail in the tenant's second verified domain: still xms_edov=true.
        _user(fb, "71de8dc9-e38f-4e7c-8bce-af908cfd1e08", "priya.nair@fabrikam.example", "member",
              "Priya", "Nair", "Data Analyst", "Fabrikam Research", "Analytics", fb_addr,
              mail="priya.nair@fabrikamresearch.example", phone="+49 89 5550 103",
              mobile="+49 151 5550 103", office="Lab 2.03"),
    ], groups=[
        Group("9b2c3d4e-1f2a-4b3c-8d4e-5f6a7b8c9d01", "Materials lab",
              ["5fbc6ba7-c16d-4c5a-8fac-8d7e6adb9c06", "60cd7cb8-d27e-4d6b-9abd-9e8f7bec0d07"]),
        Group("9b2c3d4e-1f2a-4b3c-8d4e-5f6a7b8c9d02", "Portal Admins", ["71de8dc9-e38f-4e7c-8bce-af908cfd1e08"]),
    ])
    return Directory([northwind, fabrikam])
