"""octoDNS-style geo codes for policy rules: ``EU`` (a continent) or ``EU-ES`` (a country).

The client map places clients by country only, so subdivisions (``NA-US-CA``) are not
supported. Continents follow GeoNames (what MaxMind databases report).
"""

from __future__ import annotations

import re

CONTINENT_NAMES = {
    "AF": "Africa", "AN": "Antarctica", "AS": "Asia", "EU": "Europe",
    "NA": "North America", "OC": "Oceania", "SA": "South America",
}  # fmt: skip

_COUNTRIES = {
    "AF": "AO BF BI BJ BW CD CF CG CI CM CV DJ DZ EG EH ER ET GA GH GM GN GQ GW KE KM LR LS LY MA "
    "MG ML MR MU MW MZ NA NE NG RE RW SC SD SH SL SN SO SS ST SZ TD TG TN TZ UG YT ZA ZM ZW",
    "AN": "AQ BV GS HM TF",
    "AS": "AE AF AM AZ BD BH BN BT CC CN CX GE HK ID IL IN IO IQ IR JO JP KG KH KP KR KW KZ LA LB LK "
    "MM MN MO MV MY NP OM PH PK PS QA SA SG SY TH TJ TL TM TR TW UZ VN YE",
    "EU": "AD AL AT AX BA BE BG BY CH CY CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM IS IT JE LI "
    "LT LU LV MC MD ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM UA VA XK",
    "NA": "AG AI AW BB BL BM BQ BS BZ CA CR CU CW DM DO GD GL GP GT HN HT JM KN KY LC MF MQ MS MX NI "
    "PA PM PR SV SX TC TT US VC VG VI",
    "OC": "AS AU CK FJ FM GU KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TO TV UM VU WF WS",
    "SA": "AR BO BR CL CO EC FK GF GY PE PY SR UY VE",
}
CONTINENT_OF = {
    country: continent for continent, codes in _COUNTRIES.items() for country in codes.split()
}

_GEO = re.compile(r"^([A-Z]{2})(?:-([A-Z]{2}))?(-[A-Z0-9]{1,3})?$")


def parse_geo(code: object) -> tuple[str, str | None] | str:
    """(continent, country or None) for a valid code, else the operator's error message."""
    text = str(code)
    match = _GEO.match(text)
    if not isinstance(code, str) or match is None:
        return (f'geo "{text}" is not a code: write a continent (EU) or a continent and a country '
                f"(EU-ES), as octoDNS does (continents: {', '.join(CONTINENT_NAMES)})")  # fmt: skip
    continent, country, subdivision = match.groups()
    if subdivision:
        return (f'geo "{text}": subdivisions are not supported (the client map places clients by '
                f"country only): write {continent}-{country}")  # fmt: skip
    if continent not in CONTINENT_NAMES:
        if continent in CONTINENT_OF and country is None:
            return f'geo "{text}": geos start with the continent: write {CONTINENT_OF[continent]}-{continent}'
        return f'geo "{text}": unknown continent {continent} (continents: {", ".join(CONTINENT_NAMES)})'
    if country is not None and CONTINENT_OF.get(country, continent) != continent:
        return f'geo "{text}": {country} is in {CONTINENT_NAMES[CONTINENT_OF[country]]}: write {CONTINENT_OF[country]}-{country}'
    return continent, country


def geo_countries(continent: str, country: str | None) -> frozenset[str]:
    """The country codes a parsed geo covers."""
    if country is not None:
        return frozenset({country})
    return frozenset(_COUNTRIES[continent].split())
