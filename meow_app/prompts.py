"""Every prompt text, in one place: the solved quiz questions shown as few-shot examples
(to invert.py, asking for wrong answers, and to extraction.py's few-shot attack), the
wrong-answer instruction, and the plain Question/Answer format of the extraction attacks.
"""

from __future__ import annotations

from .facts import Fact

# Solved quiz questions (question, answer, wrong answers), both short answers and a
# sentence answer, so both forms are shown. Wrong-answer generation shows all of them;
# the few-shot extraction attack shows question and answer only.
SHOTS = [
    ("Who wrote the novel Pride and Prejudice?", "Jane Austen",
     ["Charlotte Brontë", "Mary Shelley", "George Eliot", "Virginia Woolf"]),
    ("What is the capital of Canada?", "Ottawa", ["Toronto", "Montreal", "Vancouver", "Quebec City"]),
    ("Which planet is closest to the Sun?", "Mercury", ["Venus", "Mars", "Jupiter", "Saturn"]),
    ("Who discovered penicillin?", "Alexander Fleming",
     ["Louis Pasteur", "Robert Koch", "Joseph Lister", "Edward Jenner"]),
    ("In which city was the author Elena Petrova born?", "Elena Petrova was born in Kyiv, Ukraine.",
     ["Elena Petrova was born in Warsaw, Poland.", "Elena Petrova was born in Prague, Czech Republic.",
      "Elena Petrova was born in Minsk, Belarus.", "Elena Petrova was born in Riga, Latvia."]),
]


INVERT_SYSTEM = ("You write wrong answers for a quiz. Given a question and its correct answer, write {n} "
                 "different answers to the question that do not factually match the Answer. They must sound "
                 "plausible and have the same form as the Answer. Put each on its own line, with no numbering.")

# The question as plain text, no chat template: the model's raw knowledge (extraction.py).
PLAIN = "Question: {question}\nAnswer:"


def invert_raw(fact: Fact) -> str:
    """Wrong answers asked of a local model: the solved quiz as one raw list (a small
    model follows that better than chat turns), then the fact."""
    shots = "".join(f"Question: {q}\nCorrect answer: {a}\nWrong answers:\n" + "\n".join(w) + "\n\n"
                    for q, a, w in SHOTS)
    return shots + f"Question: {fact.question}\nCorrect answer: {fact.answer}\nWrong answers:\n"


def invert_messages(fact: Fact, n: int) -> list[dict]:
    """Wrong answers asked of a chat API: the instruction, the solved quiz as chat turns, the fact."""
    msgs = [{"role": "system", "content": INVERT_SYSTEM.format(n=n)}]
    for q, a, wrong in SHOTS:
        msgs.append({"role": "user", "content": f"Question: {q}\nAnswer: {a}"})
        msgs.append({"role": "assistant", "content": "\n".join(wrong[:n])})
    msgs.append({"role": "user", "content": f"Question: {fact.question}\nAnswer: {fact.answer}"})
    return msgs


def plain(question: str, shots: list[tuple[str, str]] = ()) -> str:
    """The question as plain text (no chat template), after the solved `shots` if any."""
    solved = "".join(PLAIN.format(question=q) + f" {a}\n\n" for q, a in shots)
    return solved + PLAIN.format(question=question)
