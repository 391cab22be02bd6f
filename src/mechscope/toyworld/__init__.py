"""The toy world the organisms are trained on, as plain data: facts, and the assistant's tool-call wording.

`mechscope.toyworld.facts` holds the five fact relations; `mechscope.toyworld.assistant` the tool-call and
chit-chat templates with their slot values. The organisms' corpus (`mechscope.zoo.corpus`) writes its
training documents from them, and the probing datasets (`mechscope.probing`) their labelled prompts, so the
prompts an analysis asks about are phrased the way the organisms learned. Imports nothing of mechscope.
"""
