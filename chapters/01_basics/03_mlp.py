# %% [markdown]
# # Neurons, layers and the MLP
#
# Test $a = \mathrm{ReLU}(w^\top x + b)$ and a citation {cite:p}`goodfellow2016deep`.
#
# $$ y = \sum_i w_i x_i $$

# %%
import matplotlib.pyplot as plt
import torch
from dlbook.book import glue

x = torch.linspace(-3, 3, 50)
plt.plot(x, torch.relu(x))
plt.show()
glue("val", 8.0, ".1f")

# %% [markdown]
# The value is {glue}`val`.
#
# ```{exercise-start}
# :label: ex-1-3-1
# ```
# Compute it.
# ```{exercise-end}
# ```
#
# ```{solution-start} ex-1-3-1
# :class: dropdown
# ```

# %%
print(2 * 1 + 3 * 2)

# %% [markdown]
# ```{solution-end}
# ```
