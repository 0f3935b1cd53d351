"""Seeded synthetic multi-session dialogues: people whose facts change over time.

Each conversation follows one person (the first speaker, e.g. ``"Maya"``) talking to ``"assistant"``
or to a friend. Every session states ``events_per_session`` facts (moves, jobs, relationships,
preferences, dated events, routines), one user turn each followed by a reply, plus ``filler_turns``
small-talk turns that carry no fact (user line + reply pairs at random points; an odd one is a closing
user line). Conversation ``index`` depends only on ``(seed, index)`` and the config, so any slice of a
corpus can be generated on its own and streamed.

Formats:

* ids: conversation ``syn-{seed}-{index:06d}``, session ``S{n}``, turn ``S{n}:{k}`` (both 1-based),
  question ``{conversation_id}:q{j}`` (1-based).
* timestamps: ``datetime.isoformat(timespec="minutes")`` (``2023-05-14T09:30``), 2-28 days apart,
  starting on a seeded day in 2022-2024; ``Question.date`` is 1-21 days after the last session.
* ``Session.metadata["facts"]``: ``{kind, attribute, value, previous, turn_ids, date}`` for every fact
  stated in the session, in turn order (a job statement gives two facts, employer and role, on one
  turn). ``date`` is an ISO day (``2023-05-14``): the day a move, job change, adoption or new friendship
  happened (texts say "today", "yesterday", "two days ago"...), the scheduled day of a trip, concert,
  appointment or birthday (texts say "on May 14"), else the session's day.
  Replaced attributes (city, employer, role, partner, favorite_food, hobby, favorite_music, gym_day,
  commute) carry the value they replace in ``previous`` (``None`` when first stated); additive ones
  (pet, friend, trip, concert, appointment, birthday) always have ``previous=None``.
* ``Conversation.metadata["profile"]``: each attribute's last stated value (for additive ones, the latest item).
* questions: categories ``single-session``, ``knowledge-update``, ``multi-session``, ``temporal``;
  one short answer each; evidence lists the turn ids that state it, in conversation order. Temporal
  answers are ISO days (``"2023-05-14"``, the fact's ``date``), or for "Which came first for Maya: A or
  B?" the earlier option's label. Count answers are decimal strings (``"3"``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import pairwise
from typing import Any, TypeVar

from components.config import SyntheticConfig
from components.dialogue.schema import Conversation, Question, Session, Turn

GENERATOR = "memforge-synthetic"
_T = TypeVar("_T")
ASSISTANT = "assistant"
CATEGORIES = ("single-session", "knowledge-update", "multi-session", "temporal")
FRIEND_CONVERSATION_PROBABILITY = 0.25

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_FIRST_DAY = date(2022, 1, 1)
_DAYS_IN_RANGE = (date(2024, 12, 31) - _FIRST_DAY).days + 1
_DAYS = tuple(timedelta(days=n) for n in range(120))

# ---------------------------------------------------------------------------------------------
# value pools (disjoint, and no value is a substring of a value in another pool)

USER_NAMES = (
    "Maya", "Daniel", "Sofia", "Marcus", "Aisha", "Tomas", "Elena", "Jamal", "Hannah", "Kenji", "Lucia", "Omar",
    "Grace", "Mateo", "Ingrid", "Ravi", "Chloe", "Felix", "Amara", "Nikolai", "Zoe", "Hugo", "Leila", "Samuel",
)  # fmt: skip
FRIEND_SPEAKERS = ("Jonas", "Tessa", "Mirela", "Theo", "Nadia", "Otto", "Ruth", "Victor", "Mei", "Andre")
CITIES = (
    "Lisbon", "Denver", "Austin", "Toronto", "Berlin", "Melbourne", "Chicago", "Seattle", "Dublin", "Madrid",
    "Boston", "Vancouver", "Amsterdam", "Montreal", "Portland", "Copenhagen", "Nashville", "Edinburgh",
    "Barcelona", "Minneapolis",
)  # fmt: skip
EMPLOYERS = (
    "Acme Health", "Globex", "Northwind Logistics", "Initech", "Bluebird Bank", "Helios Energy", "Summit Labs",
    "Greenleaf Grocers", "Orbit Media", "Harbor Hospital", "Pinecrest Design", "Vertex Software",
    "Maple Insurance", "Cobalt Robotics", "Lumen Studios", "Riverside Academy",
)  # fmt: skip
ROLE_ARTICLES = {
    "nurse": "a", "accountant": "an", "software engineer": "a", "teacher": "a", "graphic designer": "a",
    "data analyst": "a", "project manager": "a", "pharmacist": "a", "architect": "an", "marketing lead": "a",
    "physiotherapist": "a", "sales manager": "a", "UX researcher": "a", "electrician": "an", "chef": "a",
    "paralegal": "a",
}  # fmt: skip
ROLES = tuple(ROLE_ARTICLES)
PARTNERS = (
    "Alex", "Jordan", "Riley", "Casey", "Morgan", "Jamie", "Robin", "Avery", "Quinn", "Drew", "Charlie", "Skyler",
    "Parker", "Reese", "Emerson", "Rowan",
)  # fmt: skip
FRIENDS = ("Priya", "Luca", "Farah", "Benji", "Ines", "Kofi", "Marta", "Yusuf", "Greta", "Diego", "Anya", "Tariq")
RELATIONS = {
    "Leo": "brother", "Helen": "mom", "Frank": "dad", "Nina": "sister", "Rosa": "grandma", "Walter": "grandpa",
    "Iris": "niece", "Paul": "uncle", "Dora": "aunt", "Ethan": "nephew", "Gwen": "cousin", "Max": "cousin",
}  # fmt: skip
RELATIVES = tuple(RELATIONS)
PET_NAMES = (
    "Biscuit", "Mochi", "Pepper", "Juniper", "Waffles", "Pickles", "Nugget", "Ziggy", "Clementine", "Bruno",
    "Luna", "Pretzel",
)  # fmt: skip
SPECIES = ("dog", "cat", "rabbit", "parrot", "hamster", "tortoise", "ferret", "guinea pig")
MEETING_PLACES = (
    "the climbing gym", "a board game night", "my neighbour's barbecue", "a volunteer cleanup", "a cooking class",
    "the farmers market", "a book club", "a friend's wedding", "the community garden", "a trivia night",
)  # fmt: skip
FOODS = (
    "ramen", "tacos", "sushi", "lasagna", "pad thai", "dumplings", "paella", "gnocchi", "butter chicken",
    "falafel", "pizza", "bibimbap", "shakshuka", "risotto", "pierogi", "ceviche",
)  # fmt: skip
HOBBIES = (
    "pottery", "rock climbing", "painting", "chess", "gardening", "trail running", "photography", "knitting",
    "birdwatching", "surfing", "woodworking", "salsa dancing", "calligraphy", "sailing", "archery", "skateboarding",
)  # fmt: skip
MUSIC = (
    "jazz", "indie rock", "hip hop", "classical", "country", "techno", "bossa nova", "k-pop", "folk", "blues",
    "reggae", "synth-pop", "metal", "soul", "afrobeats", "lo-fi",
)  # fmt: skip
TRIP_DESTINATIONS = (
    "Kyoto", "Reykjavik", "Marrakesh", "Lima", "Hanoi", "Cape Town", "Santorini", "Banff", "Bali", "Prague",
    "Havana", "Oaxaca", "Tasmania", "Patagonia", "Seoul", "Istanbul",
)  # fmt: skip
ARTISTS = (
    "Arctic Monkeys", "Radiohead", "Billie Eilish", "Coldplay", "Kendrick Lamar", "Florence and the Machine",
    "Tame Impala", "Hozier", "Lizzo", "The National", "Bon Iver", "Phoebe Bridgers", "Vampire Weekend", "Mitski",
    "Fleet Foxes", "Khruangbin",
)  # fmt: skip
APPOINTMENTS = ("dentist", "eye doctor", "dermatologist", "allergist", "vet", "haircut", "passport", "tax advisor")
GYM_DAYS = ("Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays", "Sundays", "weekends")
COMMUTES = ("bike", "bus", "train", "car", "subway", "ferry", "scooter", "tram")

KINDS = {
    "city": "move",
    "employer": "job",
    "role": "job",
    "partner": "relationship",
    "pet": "relationship",
    "friend": "relationship",
    "favorite_food": "preference",
    "hobby": "preference",
    "favorite_music": "preference",
    "trip": "event",
    "concert": "event",
    "appointment": "event",
    "birthday": "event",
    "gym_day": "routine",
    "commute": "routine",
}
POOLS: dict[str, tuple[str, ...]] = {
    "city": CITIES,
    "employer": EMPLOYERS,
    "role": ROLES,
    "partner": PARTNERS,
    "pet": PET_NAMES,
    "friend": FRIENDS,
    "favorite_food": FOODS,
    "hobby": HOBBIES,
    "favorite_music": MUSIC,
    "trip": TRIP_DESTINATIONS,
    "concert": ARTISTS,
    "appointment": APPOINTMENTS,
    "birthday": RELATIVES,
    "gym_day": GYM_DAYS,
    "commute": COMMUTES,
}
ADDITIVE = frozenset({"pet", "friend", "trip", "concert", "appointment", "birthday"})
SCHEDULED = frozenset({"trip", "concert", "appointment", "birthday"})
# One event key = one user turn; "job" states both employer and role.
EVENT_KEYS = (
    "move", "job", "partner", "pet", "friend", "favorite_food", "hobby", "favorite_music", "trip", "concert",
    "appointment", "birthday", "gym_day", "commute",
)  # fmt: skip
ADDITIVE_KEYS = ("pet", "friend", "trip", "concert", "appointment", "birthday")

# Relative day phrases with their exact offsets, so every fact date is exact.
WHEN = (("today", 0), ("this morning", 0), ("yesterday", 1), ("two days ago", 2), ("three days ago", 3))

# ---------------------------------------------------------------------------------------------
# templates

INTRO = {
    "city": (
        "I live in {value}, by the way, so that's where I'm writing from.",
        "Just for context, I'm based in {value}.",
        "Life in {value} has been pretty good to me so far; I've lived here a few years.",
    ),
    "job": (
        "I work as {role} at {employer}.",
        "For context, I'm {role} at {employer}.",
        "Work is busy; being {role} at {employer} keeps me on my toes.",
    ),
    "partner": (
        "My partner {value} says hi, by the way.",
        "I've been seeing someone named {value} for a few months now.",
        "{value}, my partner, keeps telling me I work too hard.",
    ),
    "favorite_food": (
        "My favorite food is {value}, no contest.",
        "If I could only eat one thing forever it would be {value}, my favorite food.",
        "Honestly, nothing beats {value}; that's my favorite food.",
    ),
    "hobby": (
        "My main hobby is {value}; it keeps me sane.",
        "In my free time I'm really into {value}.",
        "I spend most weekends on {value}, my favorite hobby.",
    ),
    "favorite_music": (
        "My favorite kind of music is {value}.",
        "I listen to {value} pretty much all day; it's my favorite music.",
        "If you look at my playlists, it's mostly {value}. That's my favorite music.",
    ),
    "gym_day": (
        "I hit the gym on {value}, like clockwork.",
        "My gym days are {value}; I never skip them.",
        "I always work out on {value}.",
    ),
    "commute": (
        "I usually commute to work by {value}.",
        "Most days I get to work by {value}.",
        "My commute is by {value}, about half an hour each way.",
    ),
}
CHANGE = {
    "city": (
        "Big news: I moved from {prev} to {value} {when}.",
        "I finally did it and left {prev}; I moved to {value} {when}.",
        "Writing to you from {value}! I moved here from {prev} {when}.",
        "The movers dropped off the last boxes {when}, so I've officially relocated from {prev} to {value}.",
    ),
    "job": (
        "I started a new job as {role} at {employer} {when}!",
        "Career update: I left {prev} and started as {role} at {employer} {when}.",
        "My first day as {role} at {employer} was {when}; goodbye, {prev}!",
    ),
    "partner": (
        "{prev} and I broke up a while ago, and now I'm dating {value}.",
        "Personal update: I'm with {value} now. Things with {prev} didn't work out.",
        "I've started seeing someone new, {value}, after splitting up with {prev}.",
    ),
    "favorite_food": (
        "My tastes have changed: I used to love {prev}, but now my favorite food is {value}.",
        "New favorite food alert: {value}. Sorry, {prev}, you've been replaced.",
        "I'm so over {prev}; these days my favorite thing to eat is {value}.",
    ),
    "hobby": (
        "I've kind of dropped {prev}; my new hobby is {value}.",
        "I picked up {value} recently and it has completely replaced {prev} for me.",
        "Goodbye {prev}, hello {value}: that's my hobby now.",
    ),
    "favorite_music": (
        "My music taste flipped: I used to play {prev} constantly, but now it's all {value}.",
        "I've switched from {prev} to {value}; it's all I listen to now.",
        "Lately I'm really into {value} instead of {prev}.",
    ),
    "gym_day": (
        "I moved my gym sessions from {prev} to {value}.",
        "New routine: I go to the gym on {value} now instead of {prev}.",
        "Schedule change: {prev} didn't work anymore, so I go to the gym on {value} now.",
    ),
    "commute": (
        "I switched my commute from the {prev} to the {value}.",
        "I've stopped going to work by {prev}; I go by {value} now.",
        "Commute update: I take the {value} now instead of the {prev}.",
    ),
}
ADD = {
    "pet": (
        "We adopted a {extra} named {value} {when}!",
        "Meet the newest member of the family: {value}, a {extra} I adopted {when}.",
        "I brought home a rescue {extra} {when} and named it {value}.",
    ),
    "friend": (
        "I met a new friend named {value} at {extra} {when}.",
        "I made a new friend {when}: {value}, who I met at {extra}.",
        "{value}, someone I met at {extra} {when}, is already a good friend.",
    ),
    "trip": (
        "I just booked a trip to {value} for {md}.",
        "I'm flying to {value} on {md} and I can't wait.",
        "Vacation is finally planned: {value}, leaving on {md}.",
    ),
    "concert": (
        "I got tickets to see {value} live on {md}!",
        "{value} is playing nearby on {md} and I'm going.",
        "Guess who's seeing {value} in concert on {md}? Me!",
    ),
    "appointment": (
        "Reminder to myself: {value} appointment on {md}.",
        "I finally booked my {value} appointment for {md}.",
        "My {value} appointment is on {md}, so that day is busy.",
    ),
    "birthday": (
        "My {extra} {value}'s birthday is on {md}; I need to find a gift.",
        "Don't let me forget: {value}, my {extra}, has a birthday on {md}.",
        "We're throwing a party for my {extra} {value}'s birthday on {md}.",
    ),
}
INTRO_REPLIES = (
    "Good to know, thanks for sharing.",
    "Noted! That helps me picture your day-to-day.",
    "Thanks, I'll keep that in mind.",
)
REPLIES = {
    "move": ("That's a big change! How are you settling in?", "Moving is exhausting; I hope the unpacking goes well."),
    "job": ("Congratulations on the new job! How was the first day?", "That's exciting. New jobs take a while."),
    "partner": ("Thanks for telling me. It sounds like a big shift.", "I'm glad things feel good right now."),
    "pet": ("Aww, congratulations on the new family member!", "That's wonderful. Pets make a home feel complete."),
    "friend": ("It's great when you click with someone new.", "That's lovely. New friendships are such a gift."),
    "favorite_food": ("Ha, tastes do change! Any favorite place for it?", "Sounds delicious, honestly."),
    "hobby": ("That sounds like a fun thing to get into.", "Nice! Hobbies are a great way to unwind."),
    "favorite_music": ("Good choice. Any songs you'd recommend?", "Music phases are the best."),
    "trip": ("That sounds amazing. Do you have a plan for it yet?", "How exciting! I hope the weather is kind."),
    "concert": ("That will be a great show!", "Live music is the best. Enjoy it!"),
    "appointment": ("Good for you for staying on top of it.", "Noted. I hope it goes smoothly."),
    "birthday": ("That's sweet of you to plan ahead.", "I hope the celebration is a good one."),
    "gym_day": ("Consistency is the hard part, so nice work.", "A steady routine really helps."),
    "commute": ("That sounds like a nicer way to start the day.", "Every commute has its trade-offs."),
}
FRIEND_INTRO_REPLIES = ("Oh right, good to know.", "Ha, that tracks.", "Makes sense!")
FRIEND_REPLIES = (
    "No way, that's huge!",
    "Love that for you.",
    "Oh nice, tell me more next time we meet up.",
    "Ha, good for you!",
    "Wow, okay, I did not see that coming.",
    "That's great, honestly.",
)
# Small talk with no facts: (user line, assistant reply) pairs, friend replies, and a closing user line.
FILLER = (  # (user line, assistant reply, friend reply)
    ("Hey, it's me again.", "Good to hear from you! What's on your mind today?", "Hey you! What's up?"),
    ("Hi! Hope your day is going okay.", "It is, thanks for asking. How about yours?", "Not bad at all, you?"),
    ("It's been pouring rain all day here.", "Rainy days are good for staying in, at least.", "Same here, ugh."),
    ("I'm on my second coffee already.", "Sounds like one of those mornings.", "Only the second? Rookie."),
    ("Long day, but I'm in a good mood.", "That's the best kind of tired.", "Love that energy."),
    (
        "I watched a silly movie last night and loved it.",
        "Sometimes silly is exactly what you need.",
        "Ha, send me the title.",
    ),
    ("The weekend went by way too fast.", "They always do, don't they?", "Tell me about it."),
    ("I keep meaning to clean my inbox and never do.", "Ha, you're not alone there.", "Mine is a disaster too."),
    (
        "Sorry for the slow replies, it's been one of those weeks.",
        "No worries at all. Take your time.",
        "No stress, I'm the same.",
    ),
    ("Can you believe how fast this year is going?", "It really does fly by.", "Honestly, it's scary."),
)
USER_FILLER = tuple(user for user, _, _ in FILLER)
ASSISTANT_FILLER = tuple(reply for _, reply, _ in FILLER)
FRIEND_FILLER = tuple(reply for _, _, reply in FILLER)
CLOSINGS = (
    "Anyway, I should get going. Talk soon!",
    "Okay, that's all for now. Thanks for listening!",
    "Gotta run, but this was nice.",
    "Alright, back to my day. Bye for now!",
)

# ---------------------------------------------------------------------------------------------
# question templates ({n} = the person, {v} = a value, {d} = a long date, {av} = a role with article)

SINGLE_Q = {
    "city": "Which city does {n} live in?",
    "employer": "Where does {n} work?",
    "role": "What does {n} do for a living?",
    "partner": "What is the name of {n}'s partner?",
    "favorite_food": "What is {n}'s favorite food?",
    "hobby": "What is {n}'s main hobby?",
    "favorite_music": "What kind of music does {n} like most?",
    "gym_day": "When does {n} go to the gym?",
    "commute": "How does {n} get to work?",
}
CURRENT_Q = {
    "city": "Which city does {n} live in now?",
    "employer": "Where does {n} work now?",
    "role": "What is {n}'s current job?",
    "partner": "Who is {n} dating now?",
    "favorite_food": "What is {n}'s favorite food these days?",
    "hobby": "What is {n}'s hobby these days?",
    "favorite_music": "What kind of music is {n} into these days?",
    "gym_day": "When does {n} go to the gym now?",
    "commute": "How does {n} get to work these days?",
}
BEFORE_Q = {
    "city": "Which city did {n} live in before moving to {v}?",
    "employer": "Where did {n} work before joining {v}?",
    "role": "What was {n}'s job before becoming {av}?",
    "partner": "Who was {n} dating before {v}?",
    "favorite_food": "What was {n}'s favorite food before {v}?",
    "hobby": "What was {n}'s hobby before {v}?",
    "favorite_music": "What music was {n} into before {v}?",
    "gym_day": "When did {n} go to the gym before switching to {v}?",
    "commute": "How did {n} get to work before switching to the {v}?",
}
ITEM_Q = {  # single-session questions about one additive item; the answer is its detail (species, place, relation)
    "pet": "What kind of animal is {v}, {n}'s pet?",
    "friend": "Where did {n} meet {v}?",
    "birthday": "How is {v} related to {n}?",
}
ON_DAY_Q = {  # single-session questions keyed by a scheduled day
    "trip": "What destination did {n} book a trip to for {d}?",
    "concert": "Which artist did {n} plan to see live on {d}?",
    "appointment": "What kind of appointment did {n} schedule for {d}?",
    "birthday": "Whose birthday did {n} mention for {d}?",
}
COUNT_Q = {
    "pet": "How many pets has {n} adopted?",
    "friend": "How many new friends has {n} mentioned making?",
    "trip": "How many trips has {n} planned?",
    "concert": "How many concerts has {n} planned to attend?",
}
WHEN_Q = {
    "city": "When did {n} move to {v}?",
    "employer": "When did {n} start working at {v}?",
    "pet": "When did {n} adopt {v}?",
    "friend": "When did {n} meet {v}?",
    "trip": "What date was {n}'s trip to {v} planned for?",
    "concert": "What date was {n}'s {v} concert planned for?",
    "appointment": "What date was {n}'s {v} appointment scheduled for?",
    "birthday": "What date did {n} give for {v}'s birthday?",
}
LABELS = {
    "city": "moving to {v}",
    "employer": "starting at {v}",
    "pet": "adopting {v}",
    "friend": "meeting {v}",
    "trip": "the trip to {v}",
    "concert": "the {v} concert",
    "appointment": "the {v} appointment",
    "birthday": "{v}'s birthday",
}
ORDER_Q = "Which came first for {n}: {a} or {b}?"


# ---------------------------------------------------------------------------------------------
# generation state


@dataclass(slots=True)
class _Record:
    """One stated fact, with what the question builder needs about it."""

    attr: str
    value: str
    turn_id: str
    session: int
    seq: int
    day: date
    dated: bool
    extra: str


@dataclass(slots=True)
class _State:
    """The person's facts so far: current values, used values, and every record in order."""

    current: dict[str, str] = field(default_factory=dict)
    used: dict[str, set[str]] = field(default_factory=lambda: {attr: set() for attr in POOLS})
    history: dict[str, list[_Record]] = field(default_factory=dict)
    seq: int = 0


# A pending fact from an event builder: (attribute, value, previous, day, dated, extra).
_Pending = tuple[str, str, "str | None", date, bool, str]
_Built = tuple[str, str, list[_Pending]]  # (user text, reply key, facts)


def _choice(rng: random.Random, items: Sequence[_T]) -> _T:
    """``rng.choice`` via one ``random()`` call: several times faster, same determinism."""
    return items[int(rng.random() * len(items))]


def _randint(rng: random.Random, low: int, high: int) -> int:
    """``rng.randint`` via one ``random()`` call (inclusive bounds)."""
    return low + int(rng.random() * (high - low + 1))


def _shuffle(rng: random.Random, items: list[Any]) -> None:
    """In-place Fisher-Yates shuffle driven by ``random()``."""
    for i in range(len(items) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        items[i], items[j] = items[j], items[i]


def _pick(rng: random.Random, attr: str, state: _State) -> str:
    """A value for ``attr`` not used before in this conversation (never the current one)."""
    pool = POOLS[attr]
    used = state.used[attr]
    for _ in range(6):
        value = _choice(rng, pool)
        if value not in used:
            break
    else:
        fresh = [v for v in pool if v not in used] or [v for v in pool if v != state.current.get(attr)]
        value = _choice(rng, fresh)
    used.add(value)
    state.current[attr] = value
    return value


def _when(rng: random.Random, day: date) -> tuple[str, date]:
    phrase, offset = _choice(rng, WHEN)
    return phrase, day - _DAYS[offset]


def _month_day(day: date) -> str:
    return f"{MONTHS[day.month - 1]} {day.day}"


def _long_date(day: date) -> str:
    return f"{MONTHS[day.month - 1]} {day.day}, {day.year}"


def _build_replace(attr: str) -> Callable[[random.Random, _State, date], _Built]:
    intro, change, reply_key = INTRO[attr], CHANGE[attr], "move" if attr == "city" else attr
    dated_change = attr == "city"

    def build(rng: random.Random, state: _State, day: date) -> _Built:
        prev = state.current.get(attr)
        value = _pick(rng, attr, state)
        if prev is None:
            return _choice(rng, intro).format(value=value), "", [(attr, value, None, day, False, "")]
        phrase, when = _when(rng, day) if dated_change else ("", day)
        text = _choice(rng, change).format(value=value, prev=prev, when=phrase)
        return text, reply_key, [(attr, value, prev, when, dated_change, "")]

    return build


def _build_job(rng: random.Random, state: _State, day: date) -> _Built:
    prev_employer, prev_role = state.current.get("employer"), state.current.get("role")
    employer, role = _pick(rng, "employer", state), _pick(rng, "role", state)
    with_article = f"{ROLE_ARTICLES[role]} {role}"
    if prev_employer is None:
        text = _choice(rng, INTRO["job"]).format(role=with_article, employer=employer)
        return text, "", [("employer", employer, None, day, False, ""), ("role", role, prev_role, day, False, "")]
    phrase, when = _when(rng, day)
    text = _choice(rng, CHANGE["job"]).format(role=with_article, employer=employer, prev=prev_employer, when=phrase)
    facts = [("employer", employer, prev_employer, when, True, ""), ("role", role, prev_role, when, True, "")]
    return text, "job", facts


def _build_additive(
    attr: str, extras: tuple[str, ...] | dict[str, str] = ()
) -> Callable[[random.Random, _State, date], _Built]:
    """Builder for an additive item; ``extras`` is a pool to draw a detail from, or a value -> detail map."""
    templates, scheduled = ADD[attr], attr in SCHEDULED

    def build(rng: random.Random, state: _State, day: date) -> _Built:
        value = _pick(rng, attr, state)
        if isinstance(extras, dict):
            extra = extras[value]
        elif extras:
            extra = _choice(rng, extras)
        else:
            extra = ""
        if scheduled:
            when = day + _DAYS[_randint(rng, 3, 75)]
            text = _choice(rng, templates).format(value=value, extra=extra, md=_month_day(when))
        else:
            phrase, when = _when(rng, day)
            text = _choice(rng, templates).format(value=value, extra=extra, when=phrase)
        return text, attr, [(attr, value, None, when, True, extra)]

    return build


BUILDERS: dict[str, Callable[[random.Random, _State, date], _Built]] = {
    "move": _build_replace("city"),
    "job": _build_job,
    "partner": _build_replace("partner"),
    "pet": _build_additive("pet", SPECIES),
    "friend": _build_additive("friend", MEETING_PLACES),
    "favorite_food": _build_replace("favorite_food"),
    "hobby": _build_replace("hobby"),
    "favorite_music": _build_replace("favorite_music"),
    "trip": _build_additive("trip"),
    "concert": _build_additive("concert"),
    "appointment": _build_additive("appointment"),
    "birthday": _build_additive("birthday", RELATIONS),
    "gym_day": _build_replace("gym_day"),
    "commute": _build_replace("commute"),
}


# ---------------------------------------------------------------------------------------------
# sessions


def _event_keys(rng: random.Random, count: int) -> list[str]:
    """Distinct event keys (so an attribute changes at most once a session); extra ones are additive."""
    keys = list(EVENT_KEYS)
    size = len(keys)
    for i in range(min(count, size)):  # partial Fisher-Yates
        j = i + int(rng.random() * (size - i))
        keys[i], keys[j] = keys[j], keys[i]
    del keys[min(count, size) :]
    keys.extend(_choice(rng, ADDITIVE_KEYS) for _ in range(count - len(keys)))
    return keys


def _session(
    rng: random.Random,
    state: _State,
    number: int,
    timestamp: datetime,
    speakers: tuple[str, str],
    n_events: int,
    n_filler: int,
) -> Session:
    """One session: stated facts (user turn + reply) with small-talk pairs at random slots between them.

    An odd filler turn is a closing user line at the end, so the speakers always alternate.
    """
    user, other = speakers
    day = timestamp.date()
    friend_mode = other != ASSISTANT
    events = [BUILDERS[key](rng, state, day) for key in _event_keys(rng, n_events)]
    n_events = len(events)
    n_pairs, closing = divmod(max(n_filler, 0), 2)
    if not events and not n_filler:
        closing = 1  # sessions are never empty
    slots = sorted([_randint(rng, 0, n_events) for _ in range(n_pairs)])
    slots.append(n_events + 1)  # sentinel
    turns: list[Turn] = []
    facts: list[dict[str, object]] = []
    prefix = f"S{number}:"
    next_slot = 0
    for slot in range(n_events + 1):
        while slots[next_slot] == slot:
            pair = int(rng.random() * len(FILLER))
            reply = FRIEND_FILLER[pair] if friend_mode else ASSISTANT_FILLER[pair]
            turns.append(Turn(f"{prefix}{len(turns) + 1}", user, USER_FILLER[pair]))
            turns.append(Turn(f"{prefix}{len(turns) + 1}", other, reply))
            next_slot += 1
        if slot == n_events:
            break
        text, reply_key, pending = events[slot]
        turn_id = f"{prefix}{len(turns) + 1}"
        turns.append(Turn(turn_id, user, text))
        for attr, value, previous, when, dated, extra in pending:
            facts.append(
                {
                    "kind": KINDS[attr],
                    "attribute": attr,
                    "value": value,
                    "previous": previous,
                    "turn_ids": [turn_id],
                    "date": when.isoformat(),
                }
            )
            state.seq += 1
            record = _Record(attr, value, turn_id, number, state.seq, when, dated, extra)
            state.history.setdefault(attr, []).append(record)
        if friend_mode:
            reply = _choice(rng, FRIEND_REPLIES if reply_key else FRIEND_INTRO_REPLIES)
        else:
            reply = _choice(rng, REPLIES[reply_key] if reply_key else INTRO_REPLIES)
        turns.append(Turn(f"{prefix}{len(turns) + 1}", other, reply))
    if closing:
        turns.append(Turn(f"{prefix}{len(turns) + 1}", user, _choice(rng, CLOSINGS)))
    return Session(f"S{number}", timestamp.isoformat(timespec="minutes"), tuple(turns), {"facts": facts})


def _next_timestamp(rng: random.Random, previous: datetime, min_days: int, max_days: int) -> datetime:
    day = previous.date() + _DAYS[_randint(rng, min_days, max_days)]
    return datetime(day.year, day.month, day.day, _randint(rng, 7, 22), _randint(rng, 0, 59))


# ---------------------------------------------------------------------------------------------
# questions

_Candidate = tuple[str, str, tuple[str, ...]]  # (question, answer, evidence)


def _replaced_candidates(name: str, attr: str, records: list[_Record], out: dict[str, list[_Candidate]]) -> None:
    """Questions about an attribute whose new value replaces the old one."""
    if len(records) == 1:
        out["single-session"].append((SINGLE_Q[attr].format(n=name), records[0].value, (records[0].turn_id,)))
        return
    values = [record.value for record in records]
    last = records[-1]
    out["knowledge-update"].append((CURRENT_Q[attr].format(n=name), last.value, (last.turn_id,)))
    for before, record in pairwise(records):
        if values.count(record.value) != 1:
            continue  # "before X" is ambiguous when X was held twice
        with_article = f"{ROLE_ARTICLES[record.value]} {record.value}" if attr == "role" else ""
        question = BEFORE_Q[attr].format(n=name, v=record.value, av=with_article)
        out["multi-session"].append((question, before.value, (before.turn_id, record.turn_id)))
        if record.dated and attr in WHEN_Q:
            question = WHEN_Q[attr].format(n=name, v=record.value)
            out["temporal"].append((question, record.day.isoformat(), (record.turn_id,)))


def _additive_candidates(name: str, attr: str, records: list[_Record], out: dict[str, list[_Candidate]]) -> None:
    """Questions about items that accumulate (pets, friends, scheduled events)."""
    values = [record.value for record in records]
    days = [record.day for record in records]
    for record in records:
        unique = values.count(record.value) == 1
        if unique and attr in ITEM_Q:
            out["single-session"].append((ITEM_Q[attr].format(n=name, v=record.value), record.extra, (record.turn_id,)))
        if attr in ON_DAY_Q and days.count(record.day) == 1:
            question = ON_DAY_Q[attr].format(n=name, d=_long_date(record.day))
            out["single-session"].append((question, record.value, (record.turn_id,)))
        if unique:
            question = WHEN_Q[attr].format(n=name, v=record.value)
            out["temporal"].append((question, record.day.isoformat(), (record.turn_id,)))
    if attr in COUNT_Q and records[0].session != records[-1].session:
        evidence = tuple(record.turn_id for record in records)
        out["multi-session"].append((COUNT_Q[attr].format(n=name), str(len(records)), evidence))


def _order_candidates(rng: random.Random, state: _State, name: str, out: dict[str, list[_Candidate]]) -> None:
    """Which-came-first questions over dated facts whose labels are unambiguous."""
    dated = [r for records in state.history.values() for r in records if r.dated and r.attr in LABELS]
    labels = {record.seq: LABELS[record.attr].format(v=record.value) for record in dated}
    label_list = list(labels.values())
    dated = [record for record in dated if label_list.count(labels[record.seq]) == 1]
    if len(dated) < 2:
        return
    seen: set[tuple[int, int]] = set()
    for _ in range(4):
        a, b = rng.sample(dated, 2)
        pair = (min(a.seq, b.seq), max(a.seq, b.seq))
        if a.day == b.day or pair in seen:
            continue
        seen.add(pair)
        first = a if a.day < b.day else b
        evidence = tuple(r.turn_id for r in sorted((a, b), key=lambda r: r.seq))
        out["temporal"].append((ORDER_Q.format(n=name, a=labels[a.seq], b=labels[b.seq]), labels[first.seq], evidence))


def _questions(
    rng: random.Random, state: _State, name: str, conversation_id: str, asked: str, limit: int
) -> tuple[Question, ...]:
    """Up to ``limit`` questions, taken round-robin over the categories so all four are represented."""
    out: dict[str, list[_Candidate]] = {category: [] for category in CATEGORIES}
    for attr, records in state.history.items():
        if attr in ADDITIVE:
            _additive_candidates(name, attr, records, out)
        else:
            _replaced_candidates(name, attr, records, out)
    _order_candidates(rng, state, name, out)
    for candidates in out.values():
        _shuffle(rng, candidates)
    chosen: list[tuple[str, _Candidate]] = []
    seen: set[str] = set()
    positions = dict.fromkeys(CATEGORIES, 0)
    progressed = True
    while progressed and len(chosen) < limit:
        progressed = False
        for category in CATEGORIES:
            candidates = out[category]
            while positions[category] < len(candidates) and len(chosen) < limit:
                candidate = candidates[positions[category]]
                positions[category] += 1
                if candidate[0] not in seen:
                    seen.add(candidate[0])
                    chosen.append((category, candidate))
                    progressed = True
                    break
    return tuple(
        Question(f"{conversation_id}:q{j}", question, (answer,), category, evidence, asked)
        for j, (category, (question, answer, evidence)) in enumerate(chosen, start=1)
    )


# ---------------------------------------------------------------------------------------------
# public API


def conversation_id(seed: int, index: int) -> str:
    """The id of conversation ``index`` of the corpus generated with ``seed``."""
    return f"syn-{seed}-{index:06d}"


def generate_conversation(index: int, config: SyntheticConfig) -> Conversation:
    """Conversation ``index`` of the corpus; depends only on ``(config.seed, index)`` and the config."""
    seed = config.seed
    rng = random.Random(f"{GENERATOR}:{seed}:{index}")
    cid = conversation_id(seed, index)
    user = _choice(rng, USER_NAMES)
    other = _choice(rng, FRIEND_SPEAKERS) if rng.random() < FRIEND_CONVERSATION_PROBABILITY else ASSISTANT
    state = _State()
    start = _FIRST_DAY + timedelta(days=int(rng.random() * _DAYS_IN_RANGE))
    timestamp = datetime(start.year, start.month, start.day, _randint(rng, 7, 22), _randint(rng, 0, 59))
    sessions = []
    for number in range(1, config.sessions_per_conversation + 1):
        if number > 1:
            timestamp = _next_timestamp(rng, timestamp, 2, 28)
        sessions.append(
            _session(rng, state, number, timestamp, (user, other), config.events_per_session, config.filler_turns)
        )
    asked = _next_timestamp(rng, timestamp, 1, 21).isoformat(timespec="minutes")
    questions = _questions(rng, state, user, cid, asked, config.questions_per_conversation)
    profile = {attr: records[-1].value for attr, records in state.history.items()}
    metadata = {"generator": GENERATOR, "seed": seed, "index": index, "profile": profile}
    return Conversation(cid, (user, other), tuple(sessions), questions, metadata)


def iter_conversations(config: SyntheticConfig, num_conversations: int | None = None) -> Iterator[Conversation]:
    """Stream conversations ``0 .. n-1`` (default ``config.num_conversations``), one at a time."""
    count = config.num_conversations if num_conversations is None else num_conversations
    for index in range(count):
        yield generate_conversation(index, config)
