"""The named people of the demo world: the sample tickets in `tickets/` are about them.

Their identities are stored the way a real app ends up storing them — emails in whatever
case the user typed, phone numbers with or without the country code — so that the demo
shows look-ups matching by normalized value, not by the exact bytes. Phone spellings are
limited to those the SQL connector probes for (`+86…`, `86…`, `0086…`, national digits):
a spelling with spaces inside would not be found, and that would be a data-map problem,
not a demo.

Only example.com / example.org addresses and made-up account ids; the phone numbers are
valid Chinese mobile numbers because ticket normalization rejects invalid ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from dsrflow.identities import normalize_email, normalize_phone


@dataclass(frozen=True)
class Login:
    """A third-party login: `provider` as the app stores it (lower case) and its openid."""

    provider: str
    openid: str

    @property
    def identity(self) -> str:
        """The `third_party` identity value a ticket carries: '<provider>:<openid>'."""
        return f"{self.provider}:{self.openid}"


@dataclass(frozen=True)
class DemoSubject:
    user_id: int
    name: str  # 姓名 as on their orders and third-party profiles
    email: str  # as stored in users.email
    phone: str  # as stored in users.phone
    logins: tuple[Login, ...]
    device_ids: tuple[str, ...]
    birthday: date
    gender: str
    unit_name: str | None
    city: str  # a key of generate.CITIES: where their location history is

    @property
    def email_normalized(self) -> str:
        return normalize_email(self.email)

    @property
    def phone_e164(self) -> str:
        return normalize_phone(self.phone, "CN")  # Wishe stores numbers as China writes them


def _years_ago(years: int, month: int, day: int) -> date:
    """A birthday `years` ago this year (so the demo's child stays a child whenever it
    runs)."""
    return date(date.today().year - years, month, day)


SUBJECTS: tuple[DemoSubject, ...] = (
    DemoSubject(
        user_id=1,
        name="张伟",
        email="Zhang.Wei@Example.com",
        phone="13912345678",
        logins=(Login("wechat", "opOnC1_4EakoKm5b_OAYGSTWjRlL"),),
        device_ids=("6BC83D50-7800-42AA-83C6-4395CA3F0493",),
        birthday=date(1988, 3, 14),
        gender="male",
        unit_name="北京星辰网络科技有限公司",
        city="北京",
    ),
    DemoSubject(
        user_id=2,
        name="王芳",
        email="wang.fang@example.org",
        phone="+8615012345678",
        logins=(
            Login("qq", "DABFFE9EF3C66E0BD49179C07F0EE48B"),
            Login("apple", "001383.6c8ff36a816926ab2db9fd281cd35fef.2217"),
        ),
        device_ids=("74e08296c5639721", "4EC6FFC4-C8A5-4BED-83FA-2EF387DC56DC"),
        birthday=date(1993, 7, 2),
        gender="female",
        unit_name=None,
        city="上海",
    ),
    DemoSubject(
        user_id=3,
        name="李娜",
        email="LI.NA@EXAMPLE.COM",
        phone="8618612345678",
        logins=(Login("weibo", "5883412297"),),
        device_ids=("fdab51f5c9771f99",),
        birthday=date(1990, 11, 23),
        gender="female",
        unit_name="广州市天河区第一中学",
        city="广州",
    ),
    DemoSubject(
        user_id=4,
        name="刘洋",
        email="Liu.Yang@Example.COM",
        phone="13698765432",
        logins=(Login("wechat", "oK6sNdVU72lZ-o2_YH19dCqgn28s"),),
        device_ids=("58FCF27D-B4E3-43B0-A1E4-70B894E300F0",),
        birthday=date(1985, 1, 30),
        gender="male",
        unit_name="深圳市前海数码有限公司",
        city="深圳",
    ),
    DemoSubject(
        user_id=5,
        name="陈静",
        email="chen.jing@example.org",
        phone="+8617712340000",
        logins=(Login("wechat", "o9Dp68GZN9Z3zLIbet6_UzH_7-3e"),),
        device_ids=("182141e0e9b84ab1",),
        birthday=date(1996, 5, 8),
        gender="female",
        unit_name="杭州云栖文化传媒有限公司",
        city="杭州",
    ),
    DemoSubject(
        user_id=6,
        name="杨磊",
        email="Yang.Lei@example.com",
        phone="13800138000",
        logins=(Login("qq", "EC75D4F4CECDBE44225121AB2B19F6C1"),),
        device_ids=("c56b3581b3036a4a",),
        birthday=date(1979, 9, 17),
        gender="male",
        unit_name="成都市锦江区人民医院",
        city="成都",
    ),
    DemoSubject(
        user_id=7,
        name="赵敏",
        email="Zhao.Min@Example.org",
        phone="+8618800001111",
        logins=(
            Login("wechat", "oLO6m4H5x29iI-Vmy0s5bla5kzFp"),
            Login("apple", "009601.bf4c564e4ac0f881cb657b69bcbbf163.2433"),
        ),
        device_ids=("537C8622-12C9-498B-B0C9-1139D5721579",),
        birthday=date(2001, 12, 1),
        gender="female",
        unit_name="武汉大学",
        city="武汉",
    ),
    DemoSubject(
        user_id=8,
        name="黄勇",
        email="huang.yong@EXAMPLE.com",
        phone="008615999990001",
        logins=(Login("weibo", "6021977854"),),
        device_ids=("e3a9d1c07b5f2468",),
        birthday=date(1982, 4, 26),
        gender="male",
        unit_name=None,
        city="西安",
    ),
    # A child (policy 7.x): the sample ticket about her comes from her mother, a verified
    # guardian, who is not a Wishe user.
    DemoSubject(
        user_id=9,
        name="周子涵",
        email="zhou.zihan@example.org",
        phone="13511112222",
        logins=(Login("qq", "5F1A9C3E7B2D4A6F8E0C1B3D5A7F9E2C"),),
        device_ids=("9d2f6c1a7e3b4058",),
        birthday=_years_ago(11, 4, 12),
        gender="female",
        unit_name=None,
        city="南京",
    ),
)


def by_id(user_id: int) -> DemoSubject:
    for subject in SUBJECTS:
        if subject.user_id == user_id:
            return subject
    raise KeyError(user_id)
