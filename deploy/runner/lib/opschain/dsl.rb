# frozen_string_literal: true

require 'rake'

module OpsChain
  # An action definition's options beyond Rake's own: what the step result and the runner need to know.
  ActionInfo = Struct.new(:name, :step_name, :description, :steps, :run_as, :ignore_failure, keyword_init: true)

  # What an action's block receives: |action| (or Rake's |task, args|); action.controller for resource actions.
  class ActionRun
    attr_reader :task, :resource

    def initialize(task, resource)
      @task = task
      @resource = resource
    end

    def name = task.name
    def controller = resource&.controller
    def properties = resource&.properties

    def method_missing(name, *args, &block) = task.respond_to?(name) ? task.public_send(name, *args, &block) : super
    def respond_to_missing?(name, include_private = false) = task.respond_to?(name) || super
  end

  # The action DSL: `action`, `resource_type`, `ref`/`resource`, `lazy`, on top of Rake (desc, namespace,
  # default and prerequisites are Rake's own).
  module Dsl
    OPTIONS = %i[steps run_as ignore_failure description step_name ignore_defined].freeze

    class << self
      # Action name → ActionInfo, for every action defined with `action` (resource actions included).
      def actions = (@actions ||= {})

      # Full resource path ("earth:australia:perth") → Resource.
      def resources = (@resources ||= {})

      def reset!
        @actions = @resources = nil
        BuiltinSteps.reset!
      end

      # "Hello world action" → "hello_world_action"; plain names (letters, digits, _, :) are kept as they are.
      def slug(name)
        text = name.to_s
        return text if text.match?(/\A[A-Za-z0-9_:]+\z/)

        text.downcase.gsub(/[^a-z0-9:]+/, '_').gsub(/\A_+|_+\z/, '')
      end

      # A steps: value (name, list, proc or method returning them) → the action names, as strings.
      def step_names(value)
        value = value.call while value.respond_to?(:call) && !value.is_a?(String) && !value.is_a?(Symbol)
        Array(value).flatten.flat_map { |item| item.respond_to?(:call) && !item.is_a?(String) && !item.is_a?(Symbol) ? step_names(item) : [item.to_s] }
      end

      # Defines an action (a Rake task in the current namespace); receiver, when given, runs the block
      # (instance_exec) — resources use it so that their properties and controller are in scope.
      def define(args, options, block, receiver: nil)
        options = options.dup
        known = options.select { |key, _| OPTIONS.include?(key) }
        rest = options.reject { |key, _| OPTIONS.include?(key) }
        args = args + [rest] unless rest.empty?
        raise ArgumentError, 'action needs one name (or name => prerequisites)' unless args.length == 1

        spec = args.first
        name, prerequisites = spec.is_a?(Hash) ? single_pair(spec) : [spec, []]
        validate_run_as(known[:run_as]) if known.key?(:run_as)
        refuse_builtin(name, 'an action name')
        Array(prerequisites).each { |prerequisite| refuse_builtin(prerequisite, 'a prerequisite') }
        task_name = slug(name)
        step_name = known[:step_name] || (task_name == name.to_s ? nil : name.to_s)
        full_name = [Rake.application.current_scope.path, task_name].reject(&:empty?).join(':')
        if actions.key?(full_name) && !known[:ignore_defined] && !@extending
          raise ArgumentError, "action #{full_name} is already defined (pass ignore_defined: true to extend it)"
        end

        Rake.application.last_description = known[:description] if known[:description]
        info = (actions[full_name] ||= ActionInfo.new(name: full_name))
        info.step_name = step_name if step_name
        info.description = known[:description] if known[:description]
        info.steps = known[:steps] if known.key?(:steps)
        info.run_as = known[:run_as].to_s.to_sym if known.key?(:run_as)
        info.ignore_failure = known[:ignore_failure] if known.key?(:ignore_failure)
        body = block && proc { |task, task_args| run_block(info, task, task_args, block, receiver) }
        Rake::Task.define_task({ task_name => Array(prerequisites).map(&:to_s) }, &body)
      end

      # Lets a definition add to an action of the same name (a controller action and a resource type action).
      def extending
        previous = @extending
        @extending = true
        yield
      ensure
        @extending = previous
      end

      # An action name as written (a name, a step name, any capitalisation) → the defined action's name.
      def resolve(reference)
        text = reference.to_s
        return text if Rake::Task.task_defined?(text)

        matches = Rake::Task.tasks.map(&:name).select do |name|
          name.casecmp?(text) || actions[name]&.step_name.to_s.casecmp?(text)
        end
        raise ArgumentError, "#{text.inspect} matches more than one action: #{matches.join(', ')}" if matches.length > 1

        matches.first || text
      end

      # Before a step runs: prerequisites written as step names or in another case point to the real actions.
      def resolve_prerequisites!
        Rake::Task.tasks.each do |task|
          task.prerequisites.map! do |prerequisite|
            next prerequisite if Rake::Task.task_defined?(prerequisite) || Rake::Task.task_defined?("#{task.scope.path}:#{prerequisite}")

            resolve(prerequisite)
          end
        end
      end

      # The child steps and strategy a step starts with: those of the actions it was asked to run.
      def start_step(requested)
        OpsChain.child_steps = requested.flat_map { |name| step_names(actions[name]&.steps) }
        strategy = requested.map { |name| actions[name]&.run_as }.compact.first
        OpsChain.child_execution_strategy = strategy || :sequential
      end

      # A child step of step_result.json: its action, plus its step name and ignore_failure when declared; a
      # built-in step (group, wait, input) with its own children.
      def child_definition(action, seen = [])
        builtin = BuiltinSteps[action]
        return BuiltinSteps.definition(builtin, seen) if builtin

        info = actions[resolve(action)]
        definition = { 'action' => action }
        definition['step_name'] = info.step_name if info&.step_name
        definition['ignore_failure'] = true if info&.ignore_failure
        definition
      end

      def validate_run_as(value)
        return if STRATEGIES.include?(value.to_s.to_sym)

        raise ArgumentError, "run_as: must be :sequential or :parallel, not #{value.inspect}#{where}"
      end

      # " (actions.rb:12)": where in actions.rb the definition being checked was written, for error messages.
      def where
        location = caller_locations.find { |candidate| File.basename(candidate.path.to_s) == 'actions.rb' }
        location ? " (actions.rb:#{location.lineno})" : ''
      end

      # expected_step_tree of a dry run: the requested actions' step tree as actions.rb declares it (step name,
      # description, prerequisites, child steps and theirs), without running anything. Child steps an action
      # adds while it runs cannot be known.
      def expected_tree(requested)
        nodes = requested.map { |name| tree_node(name, []) }
        return nodes.first if nodes.length == 1

        strategy = requested.map { |name| actions[name]&.run_as }.compact.first || :sequential
        { 'action' => requested.join(' '), 'children' => nodes.flat_map { |node| node['children'] }, 'child_execution_strategy' => strategy.to_s }
      end

      private

      def tree_node(action, path)
        builtin = BuiltinSteps[action]
        if builtin
          node = BuiltinSteps.definition(builtin).except('children')
          node['children'] = Dsl.step_names(builtin.steps).map { |child| tree_node(child, path + [action]) }
          return node
        end
        name = resolve(action)
        task = Rake::Task.task_defined?(name) ? Rake::Task[name] : nil
        info = actions[name]
        node = { 'action' => action.to_s }
        return node.merge('defined' => false) unless task

        node['step_name'] = info.step_name if info&.step_name
        description = info&.description || task.comment
        node['description'] = description if description
        node['prerequisites'] = task.prerequisites
        node['ignore_failure'] = true if info&.ignore_failure
        return node.merge('recursive' => true) if path.include?(name)

        node['children'] = step_names(info&.steps).map { |child| tree_node(child, path + [name]) }
        node['child_execution_strategy'] = (info&.run_as || :sequential).to_s
        node
      end

      def refuse_builtin(name, what)
        return unless BuiltinSteps[name]

        raise ArgumentError, "#{name} is a built-in step (OpsChain.wait_step, input_step, steps…) and cannot be #{what}: use it only in a steps: list#{where}"
      end

      def single_pair(hash)
        raise ArgumentError, "action takes one name => prerequisites pair, not #{hash.inspect}" unless hash.size == 1

        hash.first
      end

      def run_block(info, task, task_args, block, receiver)
        run = ActionRun.new(task, receiver.is_a?(Resource) ? receiver : nil)
        previous = Thread.current[:opschain_scope]
        Thread.current[:opschain_scope] = task.scope.path
        begin
          receiver ? receiver.instance_exec(run, task_args, &block) : block.call(run, task_args)
        ensure
          Thread.current[:opschain_scope] = previous
        end
      rescue StandardError => e
        raise unless info.ignore_failure

        OpsChain.logger.warn("action #{info.name} failed, ignored (ignore_failure: true): #{e.class}: #{e.message}")
      end
    end

    # --- the methods actions.rb calls ------------------------------------------------------------------------

    def action(*args, **options, &block)
      Dsl.define(args, options, block)
    end

    # Runs another action (and its prerequisites) now, in this step.
    def run_action(name, *args) = OpsChain.run_action(name, *args)

    def resource_type(name, &block) = ResourceType.define(name, &block)

    # A resource by path: "name" searched from the current namespace outwards, "^a:b" from the root.
    def ref(path) = Resource.lookup(path, Rake.application.current_scope.path) || raise(ArgumentError, "no resource #{path}")

    alias resource ref

    # A property value worked out only when first used.
    def lazy(&block) = LazyPropertyValue.new(&block)
  end

  # log.info … from anywhere: actions, controllers, resource types.
  module Logging
    private

    def log = OpsChain.logger
  end

  class << self
    def run_action(name, *args)
      task = Rake::Task[Dsl.resolve(name)]
      task.reenable
      task.invoke(*args)
    end

    # Built-in child steps: each returns a generated name to put in a steps: list (BuiltinSteps).

    # A group of child steps with its own strategy, nested in another steps: list.
    def steps(steps, run_as: :sequential, step_name: nil) = BuiltinSteps.group(steps, run_as: run_as, step_name: step_name)

    # Pauses the change until a caller continues it (ContinueChange), or for `seconds`; `steps:` start after it.
    def wait_step(seconds: nil, step_name: nil, steps: nil, ignore_failure: false)
      BuiltinSteps.wait(seconds: seconds, step_name: step_name, steps: steps, ignore_failure: ignore_failure)
    end

    # Pauses the change until a caller supplies the input arguments, written into the change's properties.
    def input_step(input_arguments:, step_name: nil, steps: nil, ignore_failure: false)
      BuiltinSteps.input(input_arguments: input_arguments, step_name: step_name, steps: steps, ignore_failure: ignore_failure)
    end

    # A wrapper around a child step whose failure does not fail the change.
    def ignore_failure_step(action, step_name: nil) = BuiltinSteps.ignore_failure(action, step_name: step_name)

    # OpsChain.step(name) is the name itself; with wait:, input_arguments: or ignore_failure: it wraps it.
    def step(name, **options) = BuiltinSteps.wrap(name, options)
  end
end

Object.include(OpsChain::Logging)
