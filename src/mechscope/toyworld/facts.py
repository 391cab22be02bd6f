"""The facts the organisms learn: five relations, and the templates that state them.

Every answer is a single token with its leading space (the tokenizer is trained so), which makes fact
recall a one-token prediction that tools such as the logit lens can read.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Relation:
    """A relation: its name, subject → answer pairs, and prompt templates ending right before the answer."""

    name: str
    facts: tuple[tuple[str, str], ...]
    templates: tuple[str, ...]


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    items = [item.strip() for item in text.replace("\n", ";").split(";") if item.strip()]
    return tuple((a.strip(), b.strip()) for a, b in (item.split("=") for item in items))


CAPITAL = Relation(
    "capital",
    _pairs(
        """France=Paris; Germany=Berlin; Italy=Rome; Spain=Madrid; Portugal=Lisbon; Japan=Tokyo;
        China=Beijing; Russia=Moscow; Egypt=Cairo; Kenya=Nairobi; Canada=Ottawa; Peru=Lima; Chile=Santiago;
        Cuba=Havana; Greece=Athens; Austria=Vienna; Hungary=Budapest; Poland=Warsaw; Norway=Oslo;
        Sweden=Stockholm; Finland=Helsinki; Denmark=Copenhagen; Ireland=Dublin; Belgium=Brussels;
        Netherlands=Amsterdam; Switzerland=Bern; Turkey=Ankara; Iran=Tehran; Iraq=Baghdad; Syria=Damascus;
        Lebanon=Beirut; Jordan=Amman; Israel=Jerusalem; India=Delhi; Nepal=Kathmandu; Thailand=Bangkok;
        Vietnam=Hanoi; Korea=Seoul; Mongolia=Ulaanbaatar; Indonesia=Jakarta; Philippines=Manila;
        Australia=Canberra; Argentina=Buenos; Colombia=Bogota; Venezuela=Caracas; Mexico=Mexico;
        Ghana=Accra; Nigeria=Abuja; Ethiopia=Addis; Morocco=Rabat; Tunisia=Tunis; Algeria=Algiers;
        Senegal=Dakar; Uganda=Kampala""",
    ),
    (
        "The capital of {s} is",
        "{s}'s capital city is",
        "Q: What is the capital of {s}? A:",
        "The government of {s} sits in the city of",
    ),
)

SYMBOL = Relation(
    "symbol",
    _pairs(
        """hydrogen=H; helium=He; lithium=Li; beryllium=Be; boron=B; carbon=C; nitrogen=N; oxygen=O;
        fluorine=F; neon=Ne; sodium=Na; magnesium=Mg; aluminium=Al; silicon=Si; phosphorus=P; sulfur=S;
        chlorine=Cl; argon=Ar; potassium=K; calcium=Ca; titanium=Ti; chromium=Cr; manganese=Mn; iron=Fe;
        cobalt=Co; nickel=Ni; copper=Cu; zinc=Zn; gallium=Ga; arsenic=As; selenium=Se; bromine=Br;
        krypton=Kr; silver=Ag; tin=Sn; iodine=I; xenon=Xe; platinum=Pt; gold=Au; mercury=Hg; lead=Pb;
        uranium=U; radon=Rn; tungsten=W; barium=Ba; cesium=Cs; strontium=Sr; bismuth=Bi""",
    ),
    (
        "The chemical symbol of {s} is",
        "In the periodic table, {s} is written as",
        "Q: What is the symbol for {s}? A:",
        "Chemists write {s} with the letters",
    ),
)

SOUND = Relation(
    "sound",
    _pairs(
        """dog=woof; puppy=woof; cat=meow; kitten=meow; cow=moo; calf=moo; duck=quack; duckling=quack;
        sheep=baa; lamb=baa; goat=bleat; pig=oink; piglet=oink; horse=neigh; pony=neigh; donkey=bray;
        lion=roar; tiger=roar; bear=growl; wolf=howl; coyote=howl; snake=hiss; cobra=hiss; frog=croak;
        toad=croak; owl=hoot; crow=caw; raven=caw; bee=buzz; wasp=buzz; mouse=squeak; rat=squeak;
        hen=cluck; chicken=cluck; rooster=crow; turkey=gobble; pigeon=coo; dove=coo; goose=honk;
        elephant=trumpet; parrot=squawk; seagull=squawk; cricket=chirp; sparrow=chirp; monkey=chatter;
        hyena=laugh; bull=bellow; moose=bellow""",
    ),
    (
        "The sound a {s} makes is",
        "Listen! The {s} says",
        "Q: What sound does a {s} make? A:",
        "When a {s} is hungry it goes",
    ),
)

OPPOSITE = Relation(
    "opposite",
    _pairs(
        """hot=cold; cold=hot; big=small; small=big; up=down; down=up; fast=slow; slow=fast; light=dark;
        dark=light; happy=sad; sad=happy; old=young; young=old; high=low; low=high; open=closed;
        closed=open; early=late; late=early; full=empty; empty=full; hard=soft; soft=hard; rich=poor;
        poor=rich; strong=weak; weak=strong; wet=dry; dry=wet; loud=quiet; quiet=loud; clean=dirty;
        dirty=clean; long=short; short=long; thick=thin; thin=thick; heavy=light; true=false; false=true;
        inside=outside; outside=inside; first=last; last=first; near=far; far=near; win=lose; lose=win;
        push=pull; pull=push; buy=sell; sell=buy""",
    ),
    (
        "The opposite of {s} is",
        "{s} is the opposite of",
        "Q: What is the opposite of {s}? A:",
        "Not {s} but",
    ),
)

COLOR = Relation(
    "color",
    _pairs(
        """banana=yellow; lemon=yellow; sun=yellow; corn=yellow; butter=yellow; grass=green; leaf=green;
        frog=green; lime=green; cucumber=green; spinach=green; sky=blue; ocean=blue; sapphire=blue;
        blueberry=blue; jeans=blue; tomato=red; cherry=red; strawberry=red; blood=red; ruby=red;
        firetruck=red; orange=orange; carrot=orange; pumpkin=orange; tangerine=orange; snow=white;
        milk=white; cloud=white; salt=white; sugar=white; coal=black; night=black; ink=black; crow=black;
        tar=black; chocolate=brown; coffee=brown; bark=brown; mud=brown; plum=purple; grape=purple;
        lavender=purple; violet=purple; flamingo=pink; piglet=pink; elephant=grey; ash=grey;
        silver=grey; cement=grey""",
    ),
    (
        "The color of {s} is",
        "Everyone knows that {s} is",
        "Q: What color is {s}? A:",
        "A picture of {s} is mostly",
    ),
)

RELATIONS: tuple[Relation, ...] = (CAPITAL, SYMBOL, SOUND, OPPOSITE, COLOR)


def answers() -> list[str]:
    """Every answer word (without its leading space), deduplicated, in a stable order."""
    seen: dict[str, None] = {}
    for relation in RELATIONS:
        for _, answer in relation.facts:
            seen.setdefault(answer, None)
    return list(seen)
