"""Demo data: the books table and its first batch of rows."""

from __future__ import annotations

BOOKS_DDL = """
CREATE TABLE IF NOT EXISTS books (
    id serial PRIMARY KEY,
    name text,
    description text,
    author text,
    year int
)
"""

BATCH_1 = [
    ("The Time Machine", "A man travels through time and witnesses the evolution of humanity.", "H.G. Wells", 1895),
    ("Brave New World", "A dystopian society where people are genetically engineered and conditioned to conform to a strict social hierarchy.", "Aldous Huxley", 1932),
    ("An Absolutely Remarkable Thing", "A young woman becomes famous after discovering a mysterious alien artifact in New York City.", "Hank Green", 2018),
    ("Dune", "A desert planet is the site of political intrigue and power struggles.", "Frank Herbert", 1965),
    ("Foundation", "A mathematician develops a science to predict the future of humanity and works to save civilization from collapse.", "Isaac Asimov", 1951),
    ("Snow Crash", "A futuristic world where the internet has evolved into a virtual reality metaverse.", "Neal Stephenson", 1992),
    ("The War of the Worlds", "A Martian invasion of Earth throws humanity into chaos.", "H.G. Wells", 1898),
    ("The Hunger Games", "A dystopian society where teenagers are forced to fight to the death in a televised spectacle.", "Suzanne Collins", 2008),
]

# The second batch of the README story (alien invasions); the README shows it as SQL.
BATCH_2 = [
    ("Old Man's War", "Earth's senior citizens are recruited to fight in an interstellar war, discovering new alien cultures and threats.", "John Scalzi", 2005),
    ("Childhood's End", "Benevolent alien overlords arrive above Earth's cities and end war, at the price of humanity's future.", "Arthur C. Clarke", 1953),
    ("The Three-Body Problem", "Contact with an alien civilization on a dying three-sun world sets it on course for Earth.", "Liu Cixin", 2008),
    ("Independence Day", "Giant alien ships appear over the world's capitals, and the survivors must outwit them.", "Stephen Molstad", 1996),
    ("Footfall", "Elephant-like aliens land in Kansas and try to conquer humanity.", "Larry Niven and Jerry Pournelle", 1985),
    ("The Puppet Masters", "Slug-like alien parasites land in Iowa and take control of human hosts.", "Robert A. Heinlein", 1951),
    ("The Body Snatchers", "A small-town doctor discovers that his neighbours are being replaced by emotionless alien duplicates.", "Jack Finney", 1955),
    ("Dawn", "Aliens rescue the last humans after a nuclear war and offer them a genetic trade.", "Octavia E. Butler", 1987),
]


def insert_sql(rows: list[tuple[str, str, str, int]]) -> str:
    """The INSERT statement for ``rows`` (what the README tells users to paste into psql)."""
    def lit(value: object) -> str:
        return str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"

    values = ",\n  ".join("(" + ", ".join(lit(v) for v in row) + ")" for row in rows)
    return f"INSERT INTO books (name, description, author, year) VALUES\n  {values};"


def seed(conn) -> bool:  # noqa: ANN001 - a psycopg connection
    """Create ``books`` and insert batch 1 if the table is new; True when seeded."""
    exists = conn.execute("SELECT to_regclass('public.books')").fetchone()[0]
    conn.execute(BOOKS_DDL)
    if exists:
        return False
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO books (name, description, author, year) VALUES (%s, %s, %s, %s)", BATCH_1)
    return True
